"""Job state transitions on both backends: claims are exclusive, leases fence, the reaper re-queues and
dead-letters, and the runner records outcomes. Real databases, no mocks."""
from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from service import jobs
from service.auth import ensure_tenant
from service.db import Job, utcnow

pytestmark = pytest.mark.postgres


def new_job(runtime, **request_over) -> str:
    request = {"model": "minilm-rt", "inputs": {"text": "Fine."}, "methods": ["gradient"], "layers": None,
               "target": "predicted", "score": "logit", "params": {"gradient": {}}, "seed": 0, **request_over}
    with runtime.db.session() as s:
        tenant = ensure_tenant(s, f"t-{threading.get_ident()}-{utcnow().timestamp()}")
        job = jobs.create(s, tenant.id, request, "r" * 64, runtime.settings.job_queue, None, "h")
        return job.id


def state(runtime, job_id) -> Job:
    with runtime.db.session() as s:
        return s.get(Job, job_id)


def test_only_one_of_many_claimers_wins(runtime):
    job_id = new_job(runtime)
    wins, barrier = [], threading.Barrier(6)

    def claim(n: int) -> None:
        barrier.wait()
        if jobs.claim(runtime.db, job_id, f"w{n}", runtime.settings, "cpu"):
            wins.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(wins) == 1
    job = state(runtime, job_id)
    assert job.status == "running" and job.attempts == 1 and job.lease_owner == f"w{wins[0]}"


def test_lease_fences_a_worker_that_lost_its_job(runtime):
    job_id = new_job(runtime)
    assert jobs.claim(runtime.db, job_id, "old", runtime.settings, "cpu")
    assert jobs.claim(runtime.db, job_id, "new", runtime.settings, "cpu") is None  # lease still valid
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert jobs.claim(runtime.db, job_id, "new", runtime.settings, "cpu").attempt == 2
    assert not jobs.heartbeat(runtime.db, job_id, "old", runtime.settings)
    assert not jobs.finish(runtime.db, job_id, "old", "succeeded", result={"stale": True})
    assert jobs.heartbeat(runtime.db, job_id, "new", runtime.settings, progress=0.5)
    assert jobs.finish(runtime.db, job_id, "new", "succeeded", result={"fresh": True})
    job = state(runtime, job_id)
    assert job.status == "succeeded" and job.result == {"fresh": True} and job.lease_owner is None


def test_reaper_requeues_expired_leases_and_resends_lost_messages(runtime):
    sent = []
    running, lost = new_job(runtime), new_job(runtime)
    jobs.claim(runtime.db, running, "dead-worker", runtime.settings, "cpu")
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == running).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    counts = jobs.reap(runtime.db, runtime.settings, lambda job_id, queue: sent.append(job_id))
    # (on PostgreSQL the database is shared by the session: other tests' rows may be reaped too)
    assert counts["requeued"] >= 1 and counts["dead"] == 0 and counts["resent"] == len(sent)
    assert {running, lost} <= set(sent)  # `lost` never had enqueued_at set
    assert state(runtime, running).status == "queued" and state(runtime, running).lease_owner is None
    sent.clear()
    jobs.reap(runtime.db, runtime.settings, lambda j, q: sent.append(j))
    assert not {running, lost} & set(sent)  # not again soon


def test_dead_letter_after_max_attempts(runtime):
    job_id = new_job(runtime)
    for attempt in range(runtime.settings.max_attempts):
        assert jobs.claim(runtime.db, job_id, f"w{attempt}", runtime.settings, "cpu")
        with runtime.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    counts = jobs.reap(runtime.db, runtime.settings, lambda j, q: None)
    assert counts["dead"] == 1
    job = state(runtime, job_id)
    assert job.status == "failed" and "delivered 3 times" in job.error["detail"]
    assert jobs.claim(runtime.db, job_id, "late", runtime.settings, "cpu") is None


def test_a_redelivered_message_beyond_max_attempts_is_dead_lettered_at_claim(runtime):
    job_id = new_job(runtime)
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(attempts=runtime.settings.max_attempts))
    assert jobs.claim(runtime.db, job_id, "w", runtime.settings, "cpu") is None
    assert state(runtime, job_id).status == "failed"


def test_cancelled_job_is_never_claimed(runtime):
    job_id = new_job(runtime)
    with runtime.db.session() as s:
        tenant = s.get(Job, job_id).tenant_id
        jobs.cancel(s, tenant, job_id)
    assert jobs.claim(runtime.db, job_id, "w", runtime.settings, "cpu") is None
    assert state(runtime, job_id).status == "cancelled"


@pytest.mark.slow
def test_runner_runs_a_real_job_and_stores_artifacts(runtime):
    from safetensors.torch import load

    from worker.runner import run_job

    job_id = new_job(runtime)
    assert run_job(runtime, job_id, "w1") == "succeeded"
    job = state(runtime, job_id)
    assert job.status == "succeeded" and job.progress == 1.0 and job.attempts == 1
    result = job.result["result"]
    assert len(result["methods"]["gradient"]["scores"]) == len(result["tokens"])
    with runtime.db.session() as s:
        names = {a.name: a for a in jobs.artifacts_of(s, job_id)}
    assert {"gradient.png", "gradient.safetensors", "result.json", "result.html"} <= set(names)
    assert runtime.store.get(names["gradient.png"].storage_key)[:8] == b"\x89PNG\r\n\x1a\n"
    page = runtime.store.get(names["result.html"].storage_key).decode()  # the job view, every artifact linked
    assert names["result.html"].content_type == "text/html" and all(f'href="./{n}"' in page for n in names)
    tensors = load(runtime.store.get(names["gradient.safetensors"].storage_key))
    assert tensors["scores"].shape[0] == len(result["tokens"])
    assert run_job(runtime, job_id, "w2") == "skipped"  # a duplicate delivery does nothing


@pytest.mark.slow
def test_runner_honours_cancel_between_steps(runtime):
    from worker.runner import run_job

    runtime.settings = replace(runtime.settings, lease_seconds=2)
    job_id = new_job(runtime, methods=["smoothgrad"], params={"smoothgrad": {"samples": 400, "batch_size": 4}})

    def cancel_soon() -> None:
        import time

        for _ in range(200):
            if state(runtime, job_id).status == "running":
                break
            time.sleep(0.05)
        with runtime.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))

    t = threading.Thread(target=cancel_soon)
    t.start()
    assert run_job(runtime, job_id, "w1") == "cancelled"
    t.join()
    assert state(runtime, job_id).status == "cancelled"


def test_runner_records_input_errors_as_problems(runtime):
    from worker.runner import run_job

    job_id = new_job(runtime, target="sarcastic")
    assert run_job(runtime, job_id, "w1") == "failed"
    error = state(runtime, job_id).error
    assert error["status"] == 422 and "sarcastic" in error["detail"]


def test_a_job_message_lands_in_the_job_queue(runtime):
    """Routing: the message for a job goes to the job queue (GPU workers), not the CPU queue."""
    from service.queue import send_job

    send_job(runtime.celery, "00000000-0000-0000-0000-000000000000", runtime.settings.job_queue)
    with runtime.celery.connection_for_read() as conn:
        channel = conn.default_channel
        assert channel.queue_declare(runtime.settings.job_queue).message_count == 1
        assert channel.queue_declare(runtime.settings.cpu_queue).message_count == 0
