"""The API in its production shape on this machine: `lantern serve` (gunicorn, 2 workers) against PostgreSQL and
Redis, driven over HTTP on 127.0.0.1 by a small threaded load generator (bounded in count and in time).

- enqueue: POST /v1/jobs (validate, tokenise, insert the row, send the id to Redis) until 202: p50/p99, requests/s
- polls: GET /v1/jobs/{id} for a fixed time: polls/s and p50/p99; beside it the conditional poll
  (If-None-Match → 304) that a well-behaved client sends while nothing changed

No worker runs: jobs stay queued (the bench's own database and queues are dropped afterwards). Tenant limits are
off for the bench (LANTERN_RATE_PER_MINUTE=0, LANTERN_MAX_IN_FLIGHT=0: one tenant sends it all). The load
generator shares the machine's 2 cores with gunicorn and PostgreSQL, so these are floor figures for a 2-core host,
not a capacity claim.
Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (as `make test` does); skipped without them.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from benchmarks import Row, ScratchDatabase, services_up

REDIS = os.environ.get("LANTERN_TEST_REDIS", "redis://127.0.0.1:6379/0")
CONCURRENCY = 8
API_WORKERS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load(session_factory, call, *, total: int | None = None, seconds: float | None = None,
         concurrency: int = CONCURRENCY) -> tuple[list[float], float, int]:
    """Run `call(session, i)` from `concurrency` threads, `total` calls in all or for `seconds`, whichever comes
    first (a hard cap of 60 s either way). Returns per-call latencies (s), wall time (s) and failures."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(total if total is not None else 10**9))
    deadline = time.perf_counter() + min(seconds if seconds is not None else 60.0, 60.0)

    def run() -> None:
        session = session_factory()
        mine: list[float] = []
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            ok = call(session, i)
            mine.append(time.perf_counter() - t0)
            if not ok:
                failures[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0, failures[0]


def run(quick: bool = False) -> list[Row]:
    if not services_up():
        print("bench_deploy: PostgreSQL and Redis on 127.0.0.1 are needed; skipped")
        return []
    import redis
    import requests

    from service.auth import create_key
    from service.db import Database

    scratch = ScratchDatabase()
    db_url = scratch.__enter__()
    tag = uuid.uuid4().hex[:8]
    queues = (f"bench-gpu-{tag}", f"bench-cpu-{tag}")
    proc = None
    try:
        db = Database(db_url)
        with db.session() as s:
            key = create_key(s, f"bench-{tag}")[1]
        db.dispose()
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        tmp = tempfile.mkdtemp(prefix="lantern-bench-")
        env = dict(os.environ, LANTERN_DATABASE_URL=db_url, LANTERN_BROKER_URL=REDIS, LANTERN_DATA_DIR=tmp,
                   LANTERN_JOB_QUEUE=queues[0], LANTERN_CPU_QUEUE=queues[1], LANTERN_RATE_PER_MINUTE="0",
                   LANTERN_MAX_IN_FLIGHT="0", LANTERN_LOG_JSON="true", HF_HUB_OFFLINE="1")
        log = open(Path(tmp) / "api.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}",
                                 "--workers", str(API_WORKERS)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the API did not come up: " + (Path(tmp) / "api.log").read_text()[-2000:])
            time.sleep(0.2)

        headers = {"Authorization": f"Bearer {key}"}

        def session() -> requests.Session:
            s = requests.Session()
            s.headers.update(headers)
            return s

        body = {"model": "minilm-rt", "inputs": {"text": "A gripping, beautifully acted film."},
                "methods": ["gradient"]}
        ids: list[str] = []

        def submit(s: requests.Session, i: int) -> bool:
            r = s.post(f"{url}/v1/jobs", json={**body, "seed": i}, timeout=30)
            if r.status_code == 202:
                ids.append(r.json()["id"])
            return r.status_code == 202

        load(session, submit, total=2 * CONCURRENCY * API_WORKERS)  # warm every gunicorn worker
        n = 120 if quick else 600
        enq, enq_wall, enq_fail = load(session, submit, total=n)
        job_id = ids[0]
        etag = session().get(f"{url}/v1/jobs/{job_id}", timeout=10).headers.get("ETag", "")

        def poll(s: requests.Session, i: int) -> bool:
            return s.get(f"{url}/v1/jobs/{ids[i % len(ids)]}", timeout=10).status_code == 200

        def poll_cached(s: requests.Session, i: int) -> bool:
            return s.get(f"{url}/v1/jobs/{job_id}", headers={"If-None-Match": etag}, timeout=10).status_code == 304

        secs = 4.0 if quick else 15.0
        polls, poll_wall, poll_fail = load(session, poll, seconds=secs)
        cached, cached_wall, cached_fail = load(session, poll_cached, seconds=secs)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        r = redis.Redis.from_url(REDIS)
        r.delete(*queues)
        scratch.__exit__(None, None, None)
    failures = enq_fail + poll_fail + cached_fail
    if failures:
        raise RuntimeError(f"{failures} requests failed during the bench")
    shape = f"gunicorn {API_WORKERS} workers, {CONCURRENCY} client threads"
    return [
        Row(f"HTTP enqueue POST /v1/jobs p50 ({shape})", "ms", pct(enq, 0.5) * 1e3, pct(polls, 0.5) * 1e3,
            "poll p50", higher_is_better=False, note=f"{len(enq)} submits, Postgres + Redis"),
        Row("HTTP enqueue POST /v1/jobs p99", "ms", pct(enq, 0.99) * 1e3, pct(polls, 0.99) * 1e3, "poll p99",
            higher_is_better=False),
        Row("HTTP enqueue throughput", "req/s", len(enq) / enq_wall,
            note=f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other work skews all rows"),
        Row(f"HTTP polls GET /v1/jobs/{{id}} sustained ({secs:.0f} s)", "polls/s", len(polls) / poll_wall,
            len(cached) / cached_wall, "If-None-Match → 304",
            note=f"p50 {pct(polls, 0.5) * 1e3:.1f} ms, mean {statistics.fmean(polls) * 1e3:.1f} ms"),
    ]
