"""Time to an explanation: a `gradient` job on a 20-token sentence, submit -> `succeeded`, p50/p99.

- embedded default (`lantern up`: SQLite, the server-less broker, local objects, one worker): jobs one after
  another, as a person trying Lantern sends them;
- production stack (gunicorn API, PostgreSQL, Redis, S3 via moto, one Celery worker): jobs submitted at 10 per
  second, open-loop.

A job's time is its document's finished_at - created_at (the server's own clock: no polling error), and the
client's submit-to-seen-succeeded beside it. Every job must come back `succeeded` with its artifacts already
listed (gradient.png, gradient.safetensors, result.json, result.html); the bench fails otherwise. Targets (issue
20): production p50 <= 150 ms and p99 <= 400 ms, embedded p50 <= 500 ms. Needs PostgreSQL and Redis on
127.0.0.1 for the production rows.
"""
from __future__ import annotations

import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from benchmarks import REDIS, Row, ScratchDatabase, services_up

TEXT = "The film is a gripping, beautifully acted story that never lets go of its audience until the end"
REQUEST = {"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"]}
ARTIFACTS = {"gradient.png", "gradient.safetensors", "result.json", "result.html"}


def run(quick: bool = False) -> list[Row]:
    rows = [embedded(quick)]
    if services_up():
        rows += production(quick)
    else:
        print("bench_latency: PostgreSQL and Redis on 127.0.0.1 are needed for the production rows; skipped")
    return rows


def embedded(quick: bool) -> Row:
    import signal

    from service.client import Client
    from service.demo import _free_port, start_embedded

    n = 6 if quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        proc, key = start_embedded(Path(tmp), port)
        try:
            client = Client(f"http://127.0.0.1:{port}", key)
            _wait_ready(client)
            timed(client, {**REQUEST, "seed": 999})  # the worker's first job loads the model
            runs = [timed(client, {**REQUEST, "seed": i}) for i in range(n)]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    server, seen = zip(*runs, strict=True)
    return Row(f"time to an explanation, embedded default: p50 ({n} jobs in turn)", "ms", pct(server, 0.5) * 1e3,
               500.0, "target", higher_is_better=False,
               note=f"p99 {pct(server, 0.99) * 1e3:.0f} ms; client-seen p50 {pct(seen, 0.5) * 1e3:.0f} ms")


def production(quick: bool) -> list[Row]:
    from tests.helpers import production_stack

    rate, seconds = 10.0, 5.0 if quick else 30.0
    with ScratchDatabase() as db_url, production_stack(db_url, REDIS, Path(tempfile.mkdtemp(prefix="lantern-lat-")),
                                                       workers=1) as stack:
        client = stack.client
        timed(client, {**REQUEST, "seed": 999})
        runs = open_loop(client, rate, seconds)
    server, seen = zip(*runs, strict=True)
    shape = f"production stack, 1 worker, {rate:.0f} jobs/s for {seconds:.0f} s"
    return [Row(f"time to an explanation, {shape}: p50", "ms", pct(server, 0.5) * 1e3, 150.0, "target",
                higher_is_better=False, note=f"client-seen p50 {pct(seen, 0.5) * 1e3:.0f} ms"),
            Row("time to an explanation, production stack: p99", "ms", pct(server, 0.99) * 1e3, 400.0, "target",
                higher_is_better=False, note=f"client-seen p99 {pct(seen, 0.99) * 1e3:.0f} ms")]


def open_loop(client, rate: float, seconds: float) -> list[tuple[float, float]]:
    """Submit at a fixed rate from one thread per job (each waits for its own job)."""
    n = int(rate * seconds)
    runs: list[tuple[float, float]] = []
    lock = threading.Lock()
    start = time.monotonic()

    def one(i: int) -> None:
        result = timed(client, {**REQUEST, "seed": i})
        with lock:
            runs.append(result)

    threads = []
    for i in range(n):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
    for t in threads:
        t.join()
    return runs


def timed(client, request: dict) -> tuple[float, float]:
    """(server-side created -> finished, client-side submit -> seen succeeded) of one job, in seconds; the job
    must succeed with every artifact listed in the document that says so."""
    t0 = time.monotonic()
    job = client.wait(client.submit(request), timeout=120, poll=0.005)
    seen = time.monotonic() - t0
    doc = job.raw if hasattr(job, "raw") else job
    listed = {a["name"] for a in doc["artifacts"]}
    if doc["status"] != "succeeded" or not ARTIFACTS <= listed:
        raise RuntimeError(f"job {doc['id']}: {doc['status']}, artifacts {sorted(listed)}: {doc.get('error')}")
    server = datetime.fromisoformat(doc["finished_at"]) - datetime.fromisoformat(doc["created_at"])
    return server.total_seconds(), seen


def _wait_ready(client) -> None:
    for _ in range(300):
        try:
            if client.session.get(f"{client.url}/readyz", timeout=2).status_code == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the embedded stack did not become ready")


def pct(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
