"""Where a job submission's CPU goes: the production app (PostgreSQL on a scratch database, Redis broker) driven
in process by Flask's test client, one thread, no HTTP server, no open loop.

    .venv/bin/python -m benchmarks.profile_submit [-n 1000] [--top 25] [--no-profile]

Prints the CPU ms per submit (process time, so waits on PostgreSQL and Redis are not counted; their own CPU is
theirs; the median of ten blocks, and the best block, which a busy machine inflates least), wall ms per
submit, then the time split into the stages of the submit path (inclusive cProfile time of
the functions that do each stage) and the top entries by cumulative and by own time. Measured with cProfile
off first (the honest figure), then with it on (its overhead inflates small functions: read the split as shares).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import REDIS, ScratchDatabase

BODY = {"model": "minilm-rt", "inputs": {"text": "A gripping, beautifully acted film."}, "methods": ["gradient"]}

# stage -> (file fragment, function name): the functions whose inclusive time is that stage. Nested stages (the
# broker publish inside the view, say) are reported as they are, each inclusive: read them against "whole request".
STAGES: list[tuple[str, str, str]] = [
    ("whole request (test client)", "werkzeug/test.py", "open"),
    ("flask dispatch (view + hooks)", "flask/app.py", "full_dispatch_request"),
    ("before_request hooks", "flask/app.py", "preprocess_request"),
    ("  auth: key + tenant lookup", "service/auth.py", "authenticate"),
    ("webargs: body + headers load (marshmallow)", "webargs/core.py", "parse"),
    ("submit() in the view", "service/api/jobs.py", "submit"),
    ("  request hash (idempotency digest)", "service/jobs.py", "request_hash"),
    ("  model + tenant limits (one SELECT)", "service/jobs.py", "model_and_limits"),
    ("    zoo_names (a directory listing)", "worker/models/__init__.py", "zoo_names"),
    ("  validation (tokenizer, limits)", "service/validation.py", "validated"),
    ("    tokenizer encode", "worker/models/hf.py", "encode"),
    ("    method registry (catalog)", "worker/methods/catalog.py", "registry"),
    ("  tenant limits (judged)", "service/jobs.py", "check"),
    ("  job INSERT (jobs.create)", "service/jobs.py", "create"),
    ("  job document", "service/jobs.py", "document"),
    ("  session commit", "sqlalchemy/orm/session.py", "commit"),
    ("  broker publish (send_job)", "service/queue.py", "send_job"),
    ("    celery message build", "celery/app/amqp.py", "as_task_v2"),
    ("    kombu publish", "kombu/messaging.py", "publish"),
    ("    redis commands", "redis/client.py", "execute_command"),
    ("response: marshmallow dump", "marshmallow/schema.py", "dump"),
    ("response: JSON encode", "flask/json/provider.py", "response"),
    ("metrics (after_request)", "service/metrics.py", "observe"),
    ("SQL: statement cache key", "sqlalchemy/sql/cache_key.py", "_generate_cache_key"),
    ("SQL: statement compile (cache misses)", "sqlalchemy/sql/compiler.py", "__init__"),
    ("SQL: ORM flush", "sqlalchemy/orm/session.py", "flush"),
    ("SQL: ORM row loading", "sqlalchemy/orm/loading.py", "instances"),
    ("SQL: driver execute (psycopg)", "psycopg/cursor.py", "execute"),
    ("SQL: pool checkout (incl. idle ping)", "sqlalchemy/pool/base.py", "_checkout"),
    ("logging", "logging/__init__.py", "_log"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="submits per measurement (default 1000)")
    parser.add_argument("--top", type=int, default=25, help="entries in each top list (default 25)")
    parser.add_argument("--no-profile", action="store_true", help="only the CPU and wall ms per submit")
    parser.add_argument("--save", metavar="PATH", help="also write the cProfile stats there (pstats, snakeviz)")
    args = parser.parse_args()
    with ScratchDatabase() as db_url, tempfile.TemporaryDirectory() as tmp:
        post, close = production_client(db_url, tmp)
        try:
            for seed in range(50):  # warm: tokenizer, statement caches, pool, broker connection
                post(10**7 + seed)
            blocks = [timed(post, args.n // 10, offset=i * args.n) for i in range(10)]
            cpu, wall = (statistics.median(b[k] for b in blocks) for k in (0, 1))
            best = min(b[0] for b in blocks)
            print(f"submit, cProfile off: {cpu:.3f} ms CPU (best tenth {best:.3f}), {wall:.3f} ms wall per submit "
                  f"(medians of 10 blocks of {args.n // 10} submits)")
            if not args.no_profile:
                profile(post, args.n, args.top, args.save)
        finally:
            close()
    return 0


def production_client(db_url: str, tmp: str) -> tuple[Callable[[int], Any], Callable[[], None]]:
    """POST /v1/jobs on the app `lantern serve` runs (create_app on Settings from the environment), with a fresh
    key; a scratch queue name so no worker takes the messages. Returns post(seed) and a close()."""
    import redis

    from service.app import create_app
    from service.auth import create_key
    from service.cli import setup_logging
    from service.config import Settings
    from service.runtime import Runtime

    tag = os.path.basename(tmp)[-8:]
    metrics_dir = os.path.join(tmp, "metrics")  # as `lantern serve` runs it: prometheus_client's multiprocess files
    os.makedirs(metrics_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    queues = (f"profile-gpu-{tag}", f"profile-cpu-{tag}")
    settings = Settings.from_env(env={}, data_dir=tmp, database_url=db_url, broker_url=REDIS,
                                 job_queue=queues[0], cpu_queue=queues[1],
                                 rate_per_minute=0, max_in_flight=0, log_level="WARNING")
    setup_logging(settings)
    rt = Runtime(settings)
    with rt.db.session() as s:
        key = create_key(s, "profile")[1]
    client = create_app(runtime=rt).test_client()
    headers = {"Authorization": f"Bearer {key}"}

    def post(seed: int) -> Any:
        response = client.post("/v1/jobs", json={**BODY, "seed": seed}, headers=headers)
        if response.status_code != 202:
            raise RuntimeError(f"submit answered {response.status_code}: {response.get_data(as_text=True)[:300]}")
        return response

    def close() -> None:
        rt.close()
        redis.Redis.from_url(REDIS).delete(*queues)

    return post, close


def timed(post: Callable[[int], Any], n: int, offset: int) -> tuple[float, float]:
    """CPU and wall milliseconds per submit over n submits."""
    c0, w0 = time.process_time(), time.perf_counter()
    for seed in range(offset, offset + n):
        post(seed)
    return (time.process_time() - c0) * 1e3 / n, (time.perf_counter() - w0) * 1e3 / n


def profile(post: Callable[[int], Any], n: int, top: int, save: str | None = None) -> None:
    profiler = cProfile.Profile(time.process_time)  # CPU time: a wait on the database is not the API's cost
    profiler.enable()
    c0 = time.process_time()
    for seed in range(10**6, 10**6 + n):
        post(seed)
    cpu = (time.process_time() - c0) * 1e3 / n
    profiler.disable()
    stats = pstats.Stats(profiler)
    if save:
        stats.dump_stats(save)
    calls = stats.total_calls / n  # type: ignore[attr-defined]
    print(f"\nsubmit, cProfile on: {cpu:.3f} ms CPU, {calls:.0f} Python function calls per submit (a count a busy "
          f"machine does not change)\n\nstages (inclusive CPU ms per submit, "
          "cProfile's clock; nested ones overlap):")
    for label, ms, calls in stage_times(stats, n):
        print(f"  {label:<46} {ms:8.3f} ms   ({calls:g} calls/submit)")
    for key in ("cumulative", "tottime"):
        print(f"\ntop {top} by {key}:")
        stats.sort_stats(key).print_stats(top)


def stage_times(stats: pstats.Stats, n: int, stages: list[tuple[str, str, str]] = STAGES,
                ) -> list[tuple[str, float, float]]:
    """(label, inclusive ms per run, calls per run) of each stage (label, file suffix, function) over n runs; the
    largest matching entry when a name matches several functions of that file."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    out = []
    for label, fragment, name in stages:
        found = [(ct, nc) for (file, _, fn), (_, nc, _, ct, _) in table.items()
                 if fn == name and file.replace(os.sep, "/").endswith(fragment)]
        if found:
            ct, nc = max(found)
            out.append((label, ct * 1e3 / n, nc / n))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
