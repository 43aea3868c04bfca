"""Chaos tests (issue 16): the production shape (gunicorn API, Celery workers, PostgreSQL, Redis, S3) with faults
injected into processes the test started itself — its own Redis and its own PostgreSQL on free ports.

Each test asserts what a user relies on: every job ends exactly once in its right state, none is dead-lettered
while its worker lives, the broker ends holding no more messages than there are waiting jobs, the API answered a
dependency's outage with 503 + Retry-After and never 500, and no stored object is left without its row."""
from __future__ import annotations

import collections
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from service.db import Artifact, Job
from tests import helpers
from tests.chaos.services import OwnPostgres, OwnRedis
from tests.helpers import api_ready, is_ancestor, production_stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]

QUICK = {"model": "cnn-rt", "inputs": {"text": "A gripping, beautifully acted film."}, "methods": ["gradient"]}
# a few seconds on one CPU thread: long enough to be running when the fault strikes
SLOW = {"model": "minilm-rt", "inputs": {"text": "Slow and steady, the film wins us over."},
        "methods": ["smoothgrad"], "params": {"smoothgrad": {"samples": 160, "batch_size": 8}}}


@pytest.fixture
def services():
    from service.migrate import upgrade

    pg, redis = OwnPostgres(), OwnRedis()
    try:
        pg.start()
        redis.start()
        upgrade(pg.url)
        yield pg, redis
    finally:
        pg.close()
        redis.close()


def chaos_stack(services, tmp: Path, **kw):
    pg, redis = services
    env = {"LANTERN_REQUEUE_AFTER": "5", **kw.pop("env", {})}
    return production_stack(pg.url, redis.url, tmp, env=env, **kw)


def submit(stack, request: dict, n: int) -> list[str]:
    return [stack.client.submit({**request, "seed": i})["id"] for i in range(n)]


def settled(stack, ids: list[str], timeout: float) -> dict[str, Job]:
    """The job rows once every job has ended."""
    def ended():
        with stack.db.session() as s:
            rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
            for row in rows.values():
                s.expunge(row)
        return rows if all(r.status in ("succeeded", "failed", "cancelled") for r in rows.values()) else None

    try:
        return wait_for(ended, timeout, "every job to end", every=0.5)
    except AssertionError:
        print(stack.logs())
        raise


def assert_succeeded_once(rows: dict[str, Job]) -> None:
    """Succeeded, each attempt closed once, the last one the success, no dead letter."""
    for job in rows.values():
        assert job.status == "succeeded" and job.error is None, (job.id, job.status, job.error)
        history = job.attempt_history or []
        assert len(history) == job.attempts and history[-1]["outcome"] == "succeeded", history
        assert all(h["outcome"] == "lease expired" for h in history[:-1]), history


def report(fault: str, rows: dict[str, Job], back: float, answers: collections.Counter | None = None) -> None:
    """One line of the chaos table (run with -s to see it): outcomes, attempts, API answers, recovery time."""
    outcomes = collections.Counter(r.status for r in rows.values())
    succeeded_twice = sum(sum(h["outcome"] == "succeeded" for h in r.attempt_history or []) > 1
                          for r in rows.values())
    print(f"CHAOS | {fault} | {len(rows)} jobs | {dict(outcomes)} | duplicated {succeeded_twice} | "
          f"attempts {sum(r.attempts for r in rows.values())} | API {dict(answers or {})} | "
          f"recovered in {time.monotonic() - back:.1f} s")


def broker_drains(stack, redis: OwnRedis) -> None:
    queues = [stack.env["LANTERN_JOB_QUEUE"], stack.env["LANTERN_CPU_QUEUE"]]
    wait_for(lambda: sum(redis.llen(q) for q in queues) == 0, 30, "the broker's lists to drain")


def assert_no_orphans(stack) -> None:
    """Every object under jobs/ belongs to an artifact row, and no temporary file is left."""
    from service.storage import open_store

    env = stack.env
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    store = open_store(env["LANTERN_STORAGE_URL"], env.get("LANTERN_S3_ENDPOINT_URL", ""))
    keys = set(store.list("jobs"))
    with stack.db.session() as s:
        rows = set(s.scalars(select(Artifact.storage_key)))
    assert keys <= rows, sorted(keys - rows)[:5]
    assert not any("/.tmp-" in k for k in keys)


class Prober(threading.Thread):
    """Calls the API while a dependency is down and counts the answers (status, Retry-After present)."""

    def __init__(self, stack, job_id: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.job_id = stack, job_id
        self.answers: collections.Counter = collections.Counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        session, url = self.stack.client.session, self.stack.url
        calls = [lambda: session.get(f"{url}/v1/jobs/{self.job_id}", timeout=10),
                 lambda: session.post(f"{url}/v1/jobs", json=QUICK, timeout=10),
                 lambda: session.get(f"{url}/v1/jobs", timeout=10),
                 lambda: requests.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer lt_0123456789ab_unknownsecret"},
                                      timeout=10)]
        while not self.stopped.is_set():
            for call in calls:
                try:
                    resp = call()
                    self.answers[(resp.status_code, "Retry-After" in resp.headers,
                                  resp.headers.get("Content-Type", "").split(";")[0])] += 1
                except requests.RequestException as e:
                    self.answers[("no answer", type(e).__name__)] += 1
            time.sleep(0.2)

    def stop(self) -> collections.Counter:
        self.stopped.set()
        self.join(30)
        return self.answers


def test_postgres_down_ten_seconds_with_jobs_in_flight(services, tmp_path):
    pg, redis = services
    with chaos_stack(services, tmp_path) as stack:
        ids = submit(stack, SLOW, 4)
        wait_for(lambda: stack.client.get(ids[0])["status"] == "running", 120, "a job to run")
        stack.db.dispose()
        pg.stop()
        prober = Prober(stack, ids[0])
        prober.start()
        time.sleep(10)
        answers = prober.stop()
        health = requests.get(f"{stack.url}/healthz", timeout=10).status_code
        ready = requests.get(f"{stack.url}/readyz", timeout=10).status_code
        pg.start()
        back = time.monotonic()
        assert answers and set(answers) == {(503, True, "application/problem+json")}, dict(answers)
        assert (health, ready) == (200, 503)

        rows = settled(stack, ids, 240)
        report("PostgreSQL stopped 10 s", rows, back, answers)
        assert_succeeded_once(rows)
        broker_drains(stack, redis)
        assert_no_orphans(stack)


def test_redis_restarted_empty_with_jobs_queued(services, tmp_path):
    pg, redis = services
    with chaos_stack(services, tmp_path, workers=1) as stack:
        ids = submit(stack, SLOW, 4)
        wait_for(lambda: stack.client.get(ids[0])["status"] == "running", 120, "a job to run")
        redis.kill()
        during = [stack.client.submit({**QUICK, "seed": 100 + i})["id"] for i in range(2)]  # accepted: rows
        time.sleep(3)
        redis.start()  # empty: the waiting messages are gone
        back = time.monotonic()
        rows = settled(stack, ids + during, 300)
        report("Redis killed, back empty after 3 s", rows, back)
        assert_succeeded_once(rows)
        broker_drains(stack, redis)
        assert_no_orphans(stack)


def test_a_duplicate_delivery_of_a_running_job_changes_nothing(services, tmp_path):
    from service.config import Settings
    from service.queue import make_celery, send_job

    pg, redis = services
    with chaos_stack(services, tmp_path, env={"LANTERN_MAX_ATTEMPTS": "1"}) as stack:
        (job_id,) = submit(stack, SLOW, 1)
        wait_for(lambda: stack.client.get(job_id)["status"] == "running", 120, "the job to run")
        app = make_celery(Settings.from_env(env={k: v for k, v in stack.env.items() if k.startswith("LANTERN_")}))
        send_job(app, job_id, stack.env["LANTERN_JOB_QUEUE"])  # the other worker takes the duplicate
        back = time.monotonic()
        rows = settled(stack, [job_id], 240)
        report("duplicate delivery of a running job (max attempts 1)", rows, back)
        assert_succeeded_once(rows)
        assert rows[job_id].attempts == 1
        assert "not claimable here" in stack.logs()
        broker_drains(stack, redis)


def test_the_api_killed_and_restarted_under_load_with_idempotency_keys(services, tmp_path):
    pg, redis = services
    with chaos_stack(services, tmp_path, env={"LANTERN_MAX_IN_FLIGHT": "100"}) as stack:
        keys = [f"load-{uuid.uuid4().hex}" for _ in range(24)]
        first: dict[str, str] = {}

        def client(chunk: list[str]) -> None:
            for key in chunk:
                try:
                    first[key] = stack.client.submit({**QUICK, "seed": keys.index(key)}, idempotency_key=key)["id"]
                except Exception:  # the API died under this request: the client retries below
                    pass

        threads = [threading.Thread(target=client, args=(keys[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(first) >= 6, 60, "the first answers", every=0.02)  # then kill it mid-stream
        api = next(p for p in stack.procs if p.name == "api")
        os.killpg(api.pid, signal.SIGKILL)
        api.wait(10)
        for t in threads:
            t.join(60)
        stack.procs.remove(api)
        stack.spawn("serve", "--bind", f"127.0.0.1:{stack.port}", "--workers", "2", name="api-again")
        wait_for(lambda: api_ready(stack.url), 60, "the API to restart", every=0.3)
        back = time.monotonic()

        again = {key: stack.client.submit({**QUICK, "seed": keys.index(key)}, idempotency_key=key)["id"]
                 for key in keys}  # the client's retry of every request, answered or not
        assert all(again[k] == first[k] for k in first), "a replay made a second job"
        with stack.db.session() as s:
            per_key = collections.Counter(s.scalars(select(Job.idempotency_key).where(Job.idempotency_key.in_(keys))))
        assert set(per_key.values()) == {1} and len(per_key) == len(keys)
        rows = settled(stack, list(again.values()), 240)
        report(f"API SIGKILLed under load, restarted ({len(first)} of {len(keys)} answered before)", rows, back)
        assert_succeeded_once(rows)
        broker_drains(stack, redis)
        assert_no_orphans(stack)


@pytest.fixture
def small_disk():
    with helpers.small_disk("1m") as where:
        yield where


def test_a_full_store_fails_jobs_cleanly_and_recovers(services, tmp_path, small_disk):
    pg, redis = services
    objects = small_disk / "objects"
    with chaos_stack(services, tmp_path, env={"LANTERN_STORAGE_URL": objects.as_uri()}) as stack:
        objects.mkdir(exist_ok=True)
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk to the last few kilobytes
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        filler.write_bytes(filler.read_bytes()[:-8192])
        ids = submit(stack, QUICK, 3)
        back = time.monotonic()
        rows = settled(stack, ids, 180)
        report("full store (1 MiB tmpfs)", rows, back)
        for job in rows.values():
            assert job.status == "failed" and job.error["status"] == 507, (job.status, job.error)
            assert "store is full" in job.error["detail"]
        assert_no_orphans(stack)
        assert not any(p.name.startswith(".tmp-") for p in objects.rglob("*"))

        filler.unlink()  # the operator frees space: new jobs succeed
        again = submit(stack, QUICK, 2)
        assert_succeeded_once(settled(stack, again, 180))
        assert_no_orphans(stack)
        broker_drains(stack, redis)


def test_a_killed_worker_s_job_finishes_once(services, tmp_path):
    pg, redis = services
    with chaos_stack(services, tmp_path) as stack:
        ids = submit(stack, SLOW, 2)

        def owner():
            with stack.db.session() as s:
                job = s.get(Job, ids[0])
                return job.lease_owner if job.status == "running" and job.progress > 0 else None

        child = int(wait_for(owner, 120, "the job to run").split(":")[1])
        victim = next(w for w in stack.workers if is_ancestor(w.pid, child))
        os.killpg(victim.pid, signal.SIGKILL)  # the machine is gone: main process and pool child
        victim.wait(10)
        back = time.monotonic()
        rows = settled(stack, ids, 240)
        report("worker SIGKILLed mid-job", rows, back)
        assert_succeeded_once(rows)
        assert rows[ids[0]].attempts == 2
        broker_drains(stack, redis)
        assert_no_orphans(stack)

