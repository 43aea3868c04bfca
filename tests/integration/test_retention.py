"""Data lifecycle (issue 16): the purge removes rows and stored objects together, never touches what a live job
needs, and leaves no object behind."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from service import jobs
from service.db import Artifact, Job, Upload, utcnow
from service.retention import purge
from service.storage import sha256
from tests.integration.test_lifecycle import new_job

pytestmark = pytest.mark.postgres

DAY = timedelta(days=1)


def with_artifact(runtime, status: str, finished_days_ago: float | None) -> str:
    """A job in `status` with one stored artifact, finished that many days ago (None: not finished)."""
    job_id = new_job(runtime)
    key, data = f"jobs/{job_id}/result.json", b'{"ok": true}'
    runtime.store.put(key, data, "application/json")
    finished = utcnow() - finished_days_ago * DAY if finished_days_ago is not None else None
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status, finished_at=finished,
                                                             created_at=utcnow() - 30 * DAY))
        s.add(Artifact(job_id=job_id, name="result.json", content_type="application/json", bytes=len(data),
                       sha256=sha256(data), storage_key=key))
    return job_id


def objects(runtime) -> set[str]:
    return set(runtime.store.list("jobs/")) | set(runtime.store.list("uploads/"))


def rows(runtime, ids: list[str]) -> tuple[set[str], set[str]]:
    """Which of these jobs still have rows, and the storage keys of their artifact rows (the PostgreSQL database
    is shared by the session's tests, the store is this test's own)."""
    with runtime.db.session() as s:
        return (set(s.scalars(select(Job.id).where(Job.id.in_(ids)))),
                set(s.scalars(select(Artifact.storage_key).where(Artifact.job_id.in_(ids)))))


def test_purge_removes_old_finished_jobs_with_their_objects_and_nothing_live(runtime):
    old_done = with_artifact(runtime, "succeeded", 10)
    old_failed = with_artifact(runtime, "failed", 8)
    recent = with_artifact(runtime, "succeeded", 1)
    running = with_artifact(runtime, "running", None)  # created a month ago, still running: its files stay
    queued = new_job(runtime)
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == queued).values(created_at=utcnow() - 30 * DAY))

    settings = replace(runtime.settings, retain_jobs_days=7)
    counts = purge(runtime.db, runtime.store, settings)
    assert counts["jobs"] >= 2  # (on PostgreSQL the session's other tests' rows are there too)
    job_ids, keys = rows(runtime, [old_done, old_failed, recent, running, queued])
    assert {old_done, old_failed}.isdisjoint(job_ids) and {recent, running, queued} <= job_ids
    assert objects(runtime) == keys  # every object has its row and every row its object
    purge(runtime.db, runtime.store, settings)  # a second pass changes nothing here
    assert rows(runtime, [recent, running, queued])[0] == {recent, running, queued}


def test_artifact_retention_keeps_the_job_document(runtime):
    old = with_artifact(runtime, "succeeded", 5)
    running = with_artifact(runtime, "running", None)
    counts = purge(runtime.db, runtime.store, replace(runtime.settings, retain_artifacts_days=2))
    assert counts["artifacts"] >= 1
    job_ids, keys = rows(runtime, [old, running])
    assert job_ids == {old, running}
    assert keys == {f"jobs/{running}/result.json"} == objects(runtime)
    with runtime.db.session() as s:
        assert jobs.document(s.get(Job, old), jobs.artifacts_of(s, old))["artifacts"] == []


def test_upload_retention(runtime):
    from service.audits import store_upload
    from service.auth import ensure_tenant

    with runtime.db.session() as s:
        tenant = ensure_tenant(s, f"up-{utcnow().timestamp()}")
        old = store_upload(s, runtime.store, tenant.id, "old.jsonl", b'{"text": "fine"}\n', runtime.settings)
        new = store_upload(s, runtime.store, tenant.id, "new.jsonl", b'{"text": "good"}\n', runtime.settings)
        s.flush()
        old.created_at = utcnow() - 40 * DAY
        old_key, new_key = old.storage_key, new.storage_key
    assert purge(runtime.db, runtime.store, replace(runtime.settings, retain_uploads_days=30))["uploads"] >= 1
    with runtime.db.session() as s:
        assert set(s.scalars(select(Upload.storage_key))) >= {new_key}
        assert old_key not in set(s.scalars(select(Upload.storage_key)))
    assert old_key not in objects(runtime) and new_key in objects(runtime)


def test_nothing_is_purged_by_default(runtime):
    ancient = with_artifact(runtime, "succeeded", 400)
    assert set(purge(runtime.db, runtime.store, runtime.settings).values()) == {0}
    assert rows(runtime, [ancient]) == ({ancient}, {f"jobs/{ancient}/result.json"})
    assert objects(runtime) == {f"jobs/{ancient}/result.json"}
    with runtime.db.session() as s:  # leave nothing ancient for the session's other purge tests
        s.execute(update(Job).where(Job.id == ancient).values(finished_at=utcnow()))


def test_an_old_audit_with_a_batch_still_running_is_kept(runtime):
    from service.auth import ensure_tenant
    from service.db import Audit

    with runtime.db.session() as s:
        tenant = ensure_tenant(s, f"au-{utcnow().timestamp()}")
        audit = Audit(tenant_id=tenant.id, status="cancelled", request={}, total=1,
                      finished_at=utcnow() - 30 * DAY)
        s.add(audit)
        s.flush()
        audit_id = audit.id
    batch = with_artifact(runtime, "running", None)
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == batch).values(audit_id=audit_id, kind="audit_batch"))
    purge(runtime.db, runtime.store, replace(runtime.settings, retain_jobs_days=7))
    with runtime.db.session() as s:
        assert s.get(Audit, audit_id) is not None and s.get(Job, batch).status == "running"
    assert objects(runtime) == {f"jobs/{batch}/result.json"}
    with runtime.db.session() as s:  # once the batch ends, the audit goes with it
        s.execute(update(Job).where(Job.id == batch).values(status="cancelled", finished_at=utcnow()))
    purge(runtime.db, runtime.store, replace(runtime.settings, retain_jobs_days=7))
    with runtime.db.session() as s:
        assert s.get(Audit, audit_id) is None and s.get(Job, batch) is None
    assert objects(runtime) == set()
