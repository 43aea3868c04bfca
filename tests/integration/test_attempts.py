"""Attempts under duplicate deliveries (issue 16, defects 1 and 6): a claim never dead-letters a job whose lease
is live; each attempt is recorded with its worker, start and end, and started_at is the latest attempt's start."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from service import jobs
from service.db import Job, utcnow
from tests.integration.test_lifecycle import new_job, state

pytestmark = pytest.mark.postgres


def expire(runtime, job_id: str) -> None:
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_a_duplicate_delivery_does_not_dead_letter_the_running_last_attempt(runtime):
    job_id = new_job(runtime)
    last = runtime.settings.max_attempts
    for attempt in range(1, last):
        assert jobs.claim(runtime.db, job_id, f"dead-{attempt}", runtime.settings, "cpu")
        expire(runtime, job_id)
    live = jobs.claim(runtime.db, job_id, "live", runtime.settings, "cpu")
    assert live is not None and live.attempt == last

    assert jobs.claim(runtime.db, job_id, "duplicate", runtime.settings, "cpu") is None
    job = state(runtime, job_id)
    assert job.status == "running" and job.lease_owner == "live"
    assert jobs.finish(runtime.db, job_id, "live", "succeeded", result={"result": {}})
    assert state(runtime, job_id).status == "succeeded"


def test_a_spent_job_whose_lease_expired_is_dead_lettered_at_claim(runtime):
    job_id = new_job(runtime)
    for attempt in range(runtime.settings.max_attempts):
        assert jobs.claim(runtime.db, job_id, f"w{attempt}", runtime.settings, "cpu")
        expire(runtime, job_id)
    assert jobs.claim(runtime.db, job_id, "late", runtime.settings, "cpu") is None
    job = state(runtime, job_id)
    assert job.status == "failed" and "delivered" in job.error["detail"]
    assert [h["outcome"] for h in job.attempt_history][-1] == "lease expired"


def test_each_attempt_is_recorded_and_started_at_is_the_latest(runtime):
    job_id = new_job(runtime)
    assert jobs.claim(runtime.db, job_id, "first", runtime.settings, "cpu")
    first_start = state(runtime, job_id).started_at
    expire(runtime, job_id)
    assert jobs.reap(runtime.db, runtime.settings, lambda j, q: None)["requeued"] == 1
    assert jobs.claim(runtime.db, job_id, "second", runtime.settings, "cpu")
    assert jobs.finish(runtime.db, job_id, "second", "succeeded", result={"result": {}})

    with runtime.db.session() as s:
        job = s.get(Job, job_id)
        doc = jobs.document(job, [])
    history = doc["attempt_history"]
    assert [(h["attempt"], h["worker"], h["outcome"]) for h in history] == [
        (1, "first", "lease expired"), (2, "second", "succeeded")]
    assert all(h["started_at"] <= h["ended_at"] for h in history)
    assert job.started_at > first_start and doc["started_at"] == history[1]["started_at"]
    assert doc["attempts"] == 2 and doc["timings"]["run_seconds"] < 5
