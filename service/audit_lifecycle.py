"""Audit lifecycle: the audit row and its item rows are the truth, and this module is the only one that changes
them after creation. The audit goes queued -> running (its first batch starts) -> succeeded | failed (the
finaliser) or cancelled (the caller); an item goes queued -> done | failed, written only by the lease holder of its
batch. The finaliser job waits until every batch has ended, then is released to the queue.

As in service/jobs.py every transition is one conditional UPDATE, so a worker that lost its lease, a late batch or
a second cancel can never overwrite what another won. Every write to the audit row bumps `version`, the ETag of
the audit document; the item counts and the aggregates so far live on the row, so reading an audit reads one row."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Exists, exists, func, select, update
from sqlalchemy.orm import Session

from service.db import (
    IN_FLIGHT,
    WAITING,
    Artifact,
    Audit,
    AuditItem,
    Database,
    Job,
    changed,
    is_id,
    tenant_row,
    utcnow,
)
from service.domain import ItemStatus, JobKind, JobStatus
from service.errors import Problem, conflict, not_found

ITEM_ENDED = (ItemStatus.DONE, ItemStatus.FAILED)
NOT_PROCESSED = Problem(500, "Not processed", "its micro-batch was dead-lettered after repeated worker loss").body()
NOTHING_EXPLAINED = Problem(500, "Audit failed", "no item could be explained; see items.csv").body()
FINALISER_FAILED = Problem(500, "Audit failed", "its report could not be made").body()

# a fold gets the open session (to read the batch's items) and the running state; it answers the new state and
# the aggregates derived from it, or None when there is nothing to fold (the batch was folded already)
Fold = Callable[[Session, dict[str, Any] | None], tuple[dict[str, Any], dict[str, Any]] | None]


def _holds_lease(job_id: str, worker: str) -> Exists:
    return exists().where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == worker)


def _bump(**values: Any) -> dict[str, Any]:
    return {**values, "version": Audit.version + 1}


# --- reading ---------------------------------------------------------------------------------------------


def get(session: Session, tenant_id: str, audit_id: str) -> Audit:
    return tenant_row(session, Audit, tenant_id, audit_id, "audit")


def etag(session: Session, tenant_id: str, audit_id: str) -> str:
    """A version tag from the row alone: every transition, item count and aggregates fold moves `version`."""
    row = session.execute(select(Audit.tenant_id, Audit.version, Audit.status).where(
        Audit.id == audit_id)).first() if is_id(audit_id) else None
    if row is None or row.tenant_id != tenant_id:
        raise not_found(f"audit {audit_id}")
    return hashlib.sha256(f"{audit_id}:{row.version}:{row.status}".encode()).hexdigest()[:32]


def counts(audit: Audit) -> dict[str, int]:
    return {"total": audit.total, "done": audit.done, "failed": audit.failed}


def artifacts_of(session: Session, audit_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.audit_id == audit_id).order_by(Artifact.name)))


def item_results(session: Session, audit_id: str, *, batch: int | None = None) -> list[dict[str, Any]]:
    """The items (every model's) as plain dicts in (model, position) order; one micro-batch's if `batch` is given."""
    where: list[ColumnElement[bool]] = [AuditItem.audit_id == audit_id]
    if batch is not None:
        where.append(AuditItem.batch == batch)
    rows = session.execute(select(AuditItem.model, AuditItem.position, AuditItem.batch, AuditItem.label,
                                  AuditItem.status, AuditItem.input, AuditItem.result, AuditItem.error,
                                  AuditItem.attempts)
                           .where(*where).order_by(AuditItem.model, AuditItem.position)).all()
    return [dict(r._mapping) for r in rows]


def unfinished_items(db: Database, audit_id: str, model: str, batch: int) -> Sequence[AuditItem]:
    """A micro-batch's items still to do (a re-run after a lost worker redoes only these)."""
    with db.session() as s:
        return s.scalars(select(AuditItem).where(
            AuditItem.audit_id == audit_id, AuditItem.model == model, AuditItem.batch == batch,
            AuditItem.status.notin_(ITEM_ENDED)).order_by(AuditItem.position)).all()


# --- worker side: batches ----------------------------------------------------------------------------------


def start(db: Database, audit_id: str) -> Audit | None:
    """queued -> running when its first batch starts (later batches find it running); the audit as it is now."""
    with db.session() as s:
        s.execute(update(Audit).where(Audit.id == audit_id, Audit.status == JobStatus.QUEUED).values(
            **_bump(status=JobStatus.RUNNING, started_at=utcnow())))
        return s.get(Audit, audit_id)


def record_item(db: Database, item_id: str, job_id: str, worker: str, status: str, attempts: int,
                result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> bool:
    """An item ends (done or failed), only while this worker holds its batch's lease, counted on the audit row in
    the same transaction. False: the lease is gone and another worker owns these items now."""
    with db.session() as s:
        written = changed(s, update(AuditItem).where(
            AuditItem.id == item_id, AuditItem.status.notin_(ITEM_ENDED), _holds_lease(job_id, worker)).values(
            status=status, attempts=attempts, result=result, error=error))
        if written:
            column = Audit.done if status == ItemStatus.DONE else Audit.failed
            audit_id = select(AuditItem.audit_id).where(AuditItem.id == item_id).scalar_subquery()
            s.execute(update(Audit).where(Audit.id == audit_id).values(**_bump(**{column.key: column + 1})))
        return bool(written)


def fold_batch(db: Database, audit_id: str, job_id: str, worker: str, fold: Fold) -> bool:
    """Fold a finished batch into the audit's aggregates so far, fenced by the batch's lease.

    The first statement is the fenced UPDATE: it takes the row's write lock (PostgreSQL row lock, SQLite's
    database lock) before the state is read, so two batches finishing at once fold one after the other, never
    both from the same state. False: the lease is gone, or the audit no longer runs."""
    with db.session() as s:
        locked = changed(s, update(Audit).where(Audit.id == audit_id, Audit.status == JobStatus.RUNNING,
                                                _holds_lease(job_id, worker)).values(**_bump()))
        if not locked:
            return False
        state = s.scalar(select(Audit.aggregate_state).where(Audit.id == audit_id))
        folded = fold(s, state)
        if folded is not None:
            s.execute(update(Audit).where(Audit.id == audit_id).values(aggregate_state=folded[0],
                                                                       aggregates=folded[1]))
        return True


def release_finalizers(db: Database, send: Callable[[str, str], None]) -> int:
    """waiting -> queued for the finaliser of every audit whose batches have all ended (succeeded, failed or
    dead-lettered), then sent to its queue."""
    with db.session() as s:
        waiting = s.execute(select(Job.id, Job.audit_id, Job.queue).where(
            Job.kind == "audit_finalize", Job.status == WAITING)).all()
        ready = []
        for job_id, audit_id, queue in waiting:
            open_batches = s.scalar(select(func.count()).select_from(Job).where(
                Job.audit_id == audit_id, Job.kind == "audit_batch", Job.status.in_(IN_FLIGHT)))
            if open_batches == 0 and changed(s, update(Job).where(Job.id == job_id, Job.status == WAITING)
                                             .values(status=JobStatus.QUEUED, enqueued_at=utcnow())):
                ready.append((job_id, queue))
    for job_id, queue in ready:
        send(job_id, queue)
    return len(ready)


def fail_abandoned(db: Database) -> int:
    """An audit whose finaliser job ended without finishing it (it failed, or was dead-lettered) -> failed, with
    that job's error: no audit stays running for ever. Run after every audit job and by the reaper."""
    with db.session() as s:
        abandoned = s.execute(select(Audit.id, Job.error).join(Job, Job.audit_id == Audit.id).where(
            Job.kind == JobKind.AUDIT_FINALIZE, Job.status == JobStatus.FAILED, Audit.status.in_(IN_FLIGHT))).all()
        return sum(changed(s, update(Audit).where(Audit.id == audit_id, Audit.status.in_(IN_FLIGHT)).values(
            **_bump(status=JobStatus.FAILED, finished_at=utcnow(), error=error or FINALISER_FAILED)))
            for audit_id, error in abandoned)


# --- worker side: the finaliser ----------------------------------------------------------------------------


def fail_unprocessed(db: Database, audit_id: str) -> int:
    """Items a dead-lettered batch never reached -> failed, so every item is accounted for."""
    with db.session() as s:
        failed = changed(s, update(AuditItem).where(
            AuditItem.audit_id == audit_id, AuditItem.status.notin_(ITEM_ENDED)).values(
            status=ItemStatus.FAILED, error=NOT_PROCESSED))
        if failed:
            s.execute(update(Audit).where(Audit.id == audit_id).values(**_bump(failed=Audit.failed + failed)))
        return failed


def finish(db: Database, audit_id: str, job_id: str, worker: str, aggregates: dict[str, Any],
           artifacts: list[Artifact]) -> str | None:
    """queued | running -> succeeded (some item explained) or failed (none), with the final aggregates and the
    report's artifacts, fenced by the finaliser's lease. The status it ended in, or None if it was not ours to end
    (cancelled meanwhile, or the lease lost)."""
    with db.session() as s:
        audit = s.get(Audit, audit_id)
        if audit is None:
            return None
        status = JobStatus.SUCCEEDED if audit.done else JobStatus.FAILED
        won = changed(s, update(Audit).where(
            Audit.id == audit_id, Audit.status.in_(IN_FLIGHT), _holds_lease(job_id, worker)).values(**_bump(
                status=status, aggregates=aggregates, aggregate_state=None, finished_at=utcnow(),
                error=None if audit.done else NOTHING_EXPLAINED)))
        if not won:
            return None
        for old in s.scalars(select(Artifact).where(Artifact.audit_id == audit_id)):
            s.delete(old)
        s.flush()
        s.add_all(artifacts)
        return status


# --- API side ----------------------------------------------------------------------------------------------


def cancel(session: Session, tenant_id: str, audit_id: str) -> Audit:
    """queued | running -> cancelled, with its queued and waiting children; running batches are flagged and stop
    at their next item. An audit already finished is 409."""
    audit = get(session, tenant_id, audit_id)
    now = utcnow()
    won = changed(session, update(Audit).where(Audit.id == audit.id, Audit.status.in_(IN_FLIGHT)).values(
        **_bump(status=JobStatus.CANCELLED, finished_at=now, cancel_requested=True)))
    if not won:
        session.refresh(audit)
        raise conflict(f"audit {audit.id} already {audit.status}")
    session.execute(update(Job).where(Job.audit_id == audit.id, Job.status.in_((JobStatus.QUEUED, WAITING))).values(
        status=JobStatus.CANCELLED, finished_at=now, cancel_requested=True))
    session.execute(update(Job).where(Job.audit_id == audit.id, Job.status == JobStatus.RUNNING).values(
        cancel_requested=True))
    session.refresh(audit)
    return audit
