"""Soak: many jobs through the production stack (gunicorn API, 2 Celery workers, PostgreSQL, Redis, S3 via moto),
mixing gradient, occlusion and lime over three zoo models, all submitted up front.

Reported: jobs/s end to end; the workers' resident memory (main processes, pool children and lease keepers summed)
after every 10 % of the jobs, and its growth after warm-up (the first 20 %); the broker's list length beside the
number of queued jobs over time (the reaper must never make the broker hold more messages than there are waiting
jobs). 2,000 jobs (`--quick`: 200). Needs PostgreSQL and Redis on 127.0.0.1, as `make test` does.
"""
from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

from benchmarks import REDIS, Row, ScratchDatabase, services_up

MODELS = ("cnn-rt", "bilstm-rt", "transformer-rt")
METHODS = ("gradient", "occlusion", "lime")
TEXTS = ("A gripping, beautifully acted film.", "Dull, slow and far too long.",
         "The cast is fine but the script never finds its feet.", "One of the warmest comedies in years.")


def _tree_rss_mib(root: int) -> float:
    """Resident memory of a process and all its descendants (MiB)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def run(quick: bool = False) -> list[Row]:
    if not services_up():
        print("bench_soak: PostgreSQL and Redis on 127.0.0.1 are needed; skipped")
        return []
    import redis
    from sqlalchemy import func, select

    from service.db import Job
    from tests.helpers import production_stack

    n = 200 if quick else 2000
    requests = [{"model": m, "methods": [x], "inputs": {"text": t}}
                for m, x, t in itertools.islice(itertools.cycle(itertools.product(MODELS, METHODS, TEXTS)), n)]
    env = {"LANTERN_MAX_IN_FLIGHT": "0", "LANTERN_RATE_PER_MINUTE": "0",  # limits off: all n are submitted at once
           "LANTERN_LEASE_SECONDS": "30", "LANTERN_REQUEUE_AFTER": "60"}
    broker = redis.Redis.from_url(REDIS)
    with ScratchDatabase() as db_url, production_stack(db_url, REDIS, Path(tempfile.mkdtemp(prefix="lantern-soak-")),
                                                       env=env) as stack:
        queues = [stack.env["LANTERN_JOB_QUEUE"], stack.env["LANTERN_CPU_QUEUE"]]
        t0 = time.monotonic()
        ids = [stack.client.submit({**r, "seed": i})["id"] for i, r in enumerate(requests)]
        memory: list[tuple[int, float]] = []
        queue: list[tuple[float, int, int]] = []  # (seconds, broker messages, queued jobs)
        step, worst_excess = max(n // 10, 1), 0
        while True:
            with stack.db.session() as s:
                done = s.scalar(select(func.count()).select_from(Job).where(
                    Job.id.in_(ids), Job.status.in_(("succeeded", "failed", "cancelled"))))
                waiting = s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids),
                                                                               Job.status == "queued"))
            messages = sum(broker.llen(q) for q in queues)
            queue.append((time.monotonic() - t0, messages, waiting))
            worst_excess = max(worst_excess, messages - waiting)
            if done >= (len(memory) + 1) * step or done == n:
                memory.append((done, sum(_tree_rss_mib(w.pid) for w in stack.workers)))
            if done == n:
                break
            if time.monotonic() - t0 > 3 * 3600:
                raise RuntimeError(f"soak did not finish: {done}/{n} jobs in 3 h")
            time.sleep(2)
        wall = time.monotonic() - t0
        with stack.db.session() as s:
            failed = s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids), Job.status != "succeeded"))
    warm = next(mib for count, mib in memory if count >= n // 5)
    growth = (memory[-1][1] - warm) / warm * 100
    print("soak memory (jobs done, worker RSS MiB):", ", ".join(f"{c}: {m:.0f}" for c, m in memory))
    print("soak queue (s, broker messages, queued jobs):",
          ", ".join(f"{t:.0f}: {m}/{w}" for t, m, w in queue[:: max(len(queue) // 15, 1)]))
    return [
        Row(f"soak: {n} jobs ({'/'.join(METHODS)} over {len(MODELS)} models), 2 workers", "jobs/s", n / wall,
            note=f"{failed} not succeeded, {wall:.0f} s"),
        Row("soak: worker RSS growth after warm-up (20 %)", "%", growth, higher_is_better=False,
            note=f"{warm:.0f} -> {memory[-1][1]:.0f} MiB (target <= 5 %)"),
        Row("soak: broker messages beyond queued jobs (worst)", "messages", worst_excess, higher_is_better=False,
            note="0 = the reaper never duplicated a waiting job's message"),
    ]
