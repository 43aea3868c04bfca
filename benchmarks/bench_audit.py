"""Audit throughput (items/s) on the production shape: PostgreSQL + Redis + Celery worker processes, measured from
the first item claimed to the finaliser's end, side by side in one run:
- micro-batches of 16 items per worker pass vs one item per task (the same engine, the same workers);
- two worker processes vs one (on this 2-core machine), for `gradient` and for `sigma` (one layer);
- faithfulness `basic` (no normalised-AOPC bound search) vs the default `full`, one worker.
Worker start-up (model loading) happens before the audit is submitted and is not counted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import REDIS, Row, ScratchDatabase, services_up


def _audit_seconds(db_url: str, workers: int, request: dict) -> tuple[float, int]:
    """Start `workers` processes, run one audit, return (seconds from first claim to finish, items)."""
    from sqlalchemy import select

    from service.app import create_app
    from service.auth import create_key
    from service.config import Settings
    from service.db import Audit
    from service.runtime import Runtime

    tag = uuid.uuid4().hex[:8]
    tmp = tempfile.mkdtemp(prefix="lantern-bench-audit-")
    env = dict(os.environ, LANTERN_DATABASE_URL=db_url, LANTERN_BROKER_URL=os.environ.get("LANTERN_TEST_REDIS", REDIS),
               LANTERN_DATA_DIR=tmp, LANTERN_JOB_QUEUE=f"gpu-{tag}", LANTERN_CPU_QUEUE=f"cpu-{tag}",
               LANTERN_REAPER_INTERVAL="2", HF_HUB_OFFLINE="1")
    settings = Settings.from_env(env=env)
    rt = Runtime(settings)
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env, start_new_session=True,
                              stdout=open(Path(tmp) / f"w{n}.log", "wb"), stderr=subprocess.STDOUT)
             for n in range(workers)]
    try:
        with rt.db.session() as s:
            key = create_key(s, f"bench-{tag}")[1]
        client = create_app(runtime=rt).test_client()
        warm = {**request, "corpus": {"items": [{"text": "warm up"}] * workers}, "batch_size": 1}
        _wait(client, key, rt, client.post("/v1/audits", json=warm, headers=_h(key)).get_json()["id"])
        audit_id = client.post("/v1/audits", json=request, headers=_h(key)).get_json()["id"]
        _wait(client, key, rt, audit_id)
        with rt.db.session() as s:
            audit = s.scalars(select(Audit).where(Audit.id == audit_id)).one()
            return (audit.finished_at - audit.started_at).total_seconds(), audit.total
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(60)
        rt.close()


def _h(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _wait(client, key, rt, audit_id: str, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(f"/v1/audits/{audit_id}", headers=_h(key)).get_json()
        if doc["status"] in ("succeeded", "failed", "cancelled"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"audit {audit_id} did not finish")


def run(quick: bool = False) -> list[Row]:
    if not services_up():
        print("bench_audit: PostgreSQL and Redis on 127.0.0.1 are needed; skipped")
        return []
    # the 256 sentences; --quick 64 (4 batches of 16: 32 items were 2 batches, one per worker, so the
    # 2-worker row measured the slower batch, not throughput)
    n_grad, n_sigma = (64, 4) if quick else (256, 12)
    base = {"model": "minilm-rt", "corpus": {"name": "rt-test"}, "seed": 0}
    gradient = {**base, "methods": ["gradient"], "sample": n_grad}
    sigma = {**base, "methods": ["sigma"], "layers": ["layer.3"], "sample": n_sigma, "batch_size": 1}  # spread out
    rows = []
    with ScratchDatabase() as db_url:
        def ips(workers: int, request: dict) -> float:
            seconds, items = _audit_seconds(db_url, workers, request)
            return items / seconds

        batched = ips(1, {**gradient, "batch_size": 16})
        single = ips(1, {**gradient, "batch_size": 1})
        rows.append(Row(f"audit gradient, {n_grad} items, 1 worker: batches of 16", "items/s", batched, single,
                        "one item per task"))
        basic = ips(1, {**gradient, "batch_size": 16, "faithfulness": "basic"})
        rows.append(Row(f"audit gradient, {n_grad} items, 1 worker, batches of 16: faithfulness basic", "items/s",
                        basic, batched, "faithfulness full"))
        two = ips(2, {**gradient, "batch_size": 16})
        rows.append(Row(f"audit gradient, {n_grad} items, batches of 16: 2 workers", "items/s", two, batched,
                        "1 worker"))
        sigma_one = ips(1, sigma)
        sigma_two = ips(2, sigma)
        rows.append(Row(f"audit sigma (layer.3), {n_sigma} items: 2 workers", "items/s", sigma_two, sigma_one,
                        "1 worker"))
    return rows
