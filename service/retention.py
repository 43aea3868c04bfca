"""Data lifecycle: what is kept, for how long, and a purge that removes rows and stored objects together.

Settings (days; 0 keeps forever): LANTERN_RETAIN_JOBS_DAYS (finished jobs and audits, with everything they
stored), LANTERN_RETAIN_ARTIFACTS_DAYS (only the stored files of finished jobs; the job document stays),
LANTERN_RETAIN_UPLOADS_DAYS (corpus uploads; an audit copies its items when it is created, so none needs them).

Nothing queued or running is ever selected. Objects are deleted before their rows: a purge cut short leaves rows
whose objects are gone (their downloads answer 404) and the next pass finishes them; it never leaves an object
that no row names.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, or_, select

from service.config import Settings
from service.db import FINISHED, IN_FLIGHT, Artifact, Audit, Database, Job, Upload, utcnow
from service.storage import Store


def purge(db: Database, store: Store, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """One pass over everything older than its retention. Returns counts of what went."""
    now = now or utcnow()
    counts = {"jobs": 0, "audits": 0, "artifacts": 0, "uploads": 0}
    if settings.retain_jobs_days > 0:
        before = now - timedelta(days=settings.retain_jobs_days)
        counts["audits"] = _purge_audits(db, store, before)
        counts["jobs"] = _purge_jobs(db, store, before)
    if settings.retain_artifacts_days > 0:
        counts["artifacts"] = _purge_artifacts(db, store, now - timedelta(days=settings.retain_artifacts_days))
    if settings.retain_uploads_days > 0:
        counts["uploads"] = _purge_uploads(db, store, now - timedelta(days=settings.retain_uploads_days))
    return counts


def _finished_before(table: type[Job] | type[Audit], before: datetime) -> tuple[ColumnElement[bool], ...]:
    return (table.status.in_(FINISHED), table.finished_at.is_not(None), table.finished_at < before)


def _purge_jobs(db: Database, store: Store, before: datetime) -> int:
    with db.session() as s:
        ids = list(s.scalars(select(Job.id).where(Job.audit_id.is_(None), *_finished_before(Job, before))))
    for job_id in ids:
        _delete_objects(db, store, Artifact.job_id == job_id)
        with db.session() as s:  # artifact rows go with the job (ON DELETE CASCADE), fenced on its state
            s.execute(delete(Artifact).where(Artifact.job_id == job_id))
            s.execute(delete(Job).where(Job.id == job_id, Job.status.in_(FINISHED)))
    return len(ids)


def _purge_audits(db: Database, store: Store, before: datetime) -> int:
    busy = select(Job.audit_id).where(Job.audit_id.is_not(None), Job.status.in_(IN_FLIGHT))  # e.g. cancelled
    with db.session() as s:
        ids = list(s.scalars(select(Audit.id).where(*_finished_before(Audit, before), Audit.id.not_in(busy))))
    for audit_id in ids:
        batch_jobs = select(Job.id).where(Job.audit_id == audit_id)
        _delete_objects(db, store, or_(Artifact.audit_id == audit_id, Artifact.job_id.in_(batch_jobs)))
        with db.session() as s:
            s.execute(delete(Artifact).where(or_(Artifact.audit_id == audit_id, Artifact.job_id.in_(batch_jobs))))
            s.execute(delete(Job).where(Job.audit_id == audit_id))
            s.execute(delete(Audit).where(Audit.id == audit_id, Audit.status.in_(FINISHED)))
    return len(ids)


def _purge_artifacts(db: Database, store: Store, before: datetime) -> int:
    old = Artifact.job_id.in_(select(Job.id).where(*_finished_before(Job, before)))
    gone = _delete_objects(db, store, old)
    with db.session() as s:
        s.execute(delete(Artifact).where(old))
    return gone


def _purge_uploads(db: Database, store: Store, before: datetime) -> int:
    with db.session() as s:
        uploads = s.execute(select(Upload.id, Upload.storage_key).where(Upload.created_at < before)).all()
    for upload_id, key in uploads:
        store.delete(key)
        with db.session() as s:
            s.execute(delete(Upload).where(Upload.id == upload_id))
    return len(uploads)


def _delete_objects(db: Database, store: Store, which: ColumnElement[bool]) -> int:
    with db.session() as s:
        keys = list(s.scalars(select(Artifact.storage_key).where(which)))
    for key in keys:
        store.delete(key)
    return len(keys)

