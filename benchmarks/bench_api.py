"""Submit-path cost: in-process (SQLite + server-less broker), and the production API driven open-loop.

Open loop: `lantern serve` (gunicorn, 2 workers of 4 threads: service/gunicorn_conf.py) on PostgreSQL and Redis,
no worker; POST /v1/jobs sent at a fixed
arrival rate whatever the answers do, each request's latency measured from its scheduled start (so a request that
waited for a free client thread or a busy server counts its wait: closed-loop benches hide exactly that). A fresh
API per run, its first request included: the cold-start stall of issue 20 (each gunicorn worker's first submits
importing the tokenizer library and the database and broker clients, 2-4 s) shows here if it comes back. Reported
per rate: p50/p99, errors, and the CPU the API's processes used (cores: CPU seconds over wall seconds). The load
generator shares this machine's cores with the API and PostgreSQL, so on a busy 2-core host it is itself a limit.
"""
from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import REDIS, Row, ScratchDatabase, services_up

RATES = (50, 100, 200, 400)
BODY = {"model": "minilm-rt", "inputs": {"text": "A gripping, beautifully acted film."}, "methods": ["gradient"]}


def run(quick: bool = False) -> list[Row]:
    return [in_process(quick), *open_loop_rows(quick)]


def in_process(quick: bool) -> Row:
    from service.app import create_app
    from service.auth import create_key
    from service.config import Settings
    from service.migrate import upgrade
    from service.runtime import Runtime

    n = 20 if quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(env={}, data_dir=tmp, rate_per_minute=10**6, max_in_flight=10**6)
        upgrade(settings.db_url)
        rt = Runtime(settings)
        with rt.db.session() as s:
            key = create_key(s, "bench")[1]
        client = create_app(runtime=rt).test_client()
        headers = {"Authorization": f"Bearer {key}"}
        job_id = client.post("/v1/jobs", json=BODY, headers=headers).get_json()["id"]  # warm the tokenizer
        t0 = time.perf_counter()
        for seed in range(n):
            client.post("/v1/jobs", json={**BODY, "seed": seed}, headers=headers)
        submit = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            client.get(f"/v1/jobs/{job_id}", headers=headers)
        poll = (time.perf_counter() - t0) / n
        rt.close()
    return Row("in-process submit (validate + row + enqueue), SQLite", "ms", submit * 1e3, poll * 1e3,
               "one poll", higher_is_better=False, note="ratio < 1: a submit costs more than a poll")


def open_loop_rows(quick: bool) -> list[Row]:
    if not services_up():
        print("bench_api: PostgreSQL and Redis on 127.0.0.1 are needed for the open-loop rows; skipped")
        return []
    seconds = 5.0 if quick else 30.0
    rows, at_200 = [], {}
    for rate in (50, 200) if quick else RATES:
        result = drive_fresh_api(rate, seconds)
        at_200 = result if rate == 200 else at_200
        rows.append(Row(f"open-loop POST /v1/jobs at {rate} req/s, {seconds:.0f} s: p99", "ms", result["p99"] * 1e3,
                        20.0 if rate == 200 else None, "target" if rate == 200 else "", higher_is_better=False,
                        note=f"p50 {result['p50'] * 1e3:.1f} ms, max {result['max'] * 1e3:.0f} ms, "
                             f"{result['errors']} errors, {result['stalls']} over 1 s, API CPU "
                             f"{result['cpu']:.2f} cores"))
    return [*rows, worker_class_row(at_200, seconds)]


# gunicorn's other worker class, driven at 200 req/s beside the default (service/gunicorn_conf.py) in the same run
OTHER_WORKERS = ("gthread workers, 4 threads (opt-in)", "--worker-class gthread --threads 4")


def worker_class_row(default: dict[str, float], seconds: float) -> Row:
    label, args = OTHER_WORKERS
    other = drive_fresh_api(200, seconds, args)
    return Row(f"open-loop at 200 req/s, {label}: p99", "ms", other["p99"] * 1e3, default["p99"] * 1e3,
               "the default (sync)", higher_is_better=False,
               note=f"p50 {other['p50'] * 1e3:.1f} ms vs {default['p50'] * 1e3:.1f}, {other['errors']} errors, API CPU "
                    f"{other['cpu']:.2f} cores vs {default['cpu']:.2f}; ratio < 1: gthread is faster")


def drive_fresh_api(rate: float, seconds: float, gunicorn_args: str = "") -> dict[str, float]:
    """A new gunicorn API (2 workers) on a scratch database, driven open-loop from its first request.
    `gunicorn_args`: more of gunicorn's options (its GUNICORN_CMD_ARGS), e.g. another worker class."""
    from tests.helpers import Stack, api_ready, wait_for

    with ScratchDatabase() as db_url, tempfile.TemporaryDirectory() as tmp:
        tag = Path(tmp).name[-8:]
        env = {"LANTERN_DATABASE_URL": db_url, "LANTERN_BROKER_URL": REDIS, "LANTERN_DATA_DIR": tmp,
               "LANTERN_JOB_QUEUE": f"bench-gpu-{tag}", "LANTERN_CPU_QUEUE": f"bench-cpu-{tag}",
               "LANTERN_RATE_PER_MINUTE": "100000000", "LANTERN_MAX_IN_FLIGHT": "100000000",
               "LANTERN_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "GUNICORN_CMD_ARGS": gunicorn_args}
        stack = Stack({**os.environ, **env}, Path(tmp))
        try:
            api = stack.spawn("serve", "--bind", f"127.0.0.1:{stack.port}", "--workers", "2", name="api")
            wait_for(lambda: api_ready(stack.url), 90, "the API to be ready")
            key = stack.key("bench")
            cpu0, t0 = tree_cpu_seconds(api.pid), time.perf_counter()
            latencies, statuses = open_loop(stack.port, key, rate, seconds)
            cpu = (tree_cpu_seconds(api.pid) - cpu0) / (time.perf_counter() - t0)
        finally:
            stack.stop()
            import redis

            redis.Redis.from_url(REDIS).delete(env["LANTERN_JOB_QUEUE"], env["LANTERN_CPU_QUEUE"])
    ordered = sorted(latencies)
    return {"p50": pct(ordered, 0.5), "p99": pct(ordered, 0.99), "max": ordered[-1], "cpu": cpu,
            "errors": sum(1 for s in statuses if s != 202), "stalls": sum(1 for x in latencies if x > 1.0)}


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def open_loop(port: int, key: str, rate: float, seconds: float, threads: int = 64) -> tuple[list[float], list[int]]:
    """POST /v1/jobs at `rate` per second for `seconds`: request i is due at start + i / rate and its latency runs
    from then to its answer. Returns latencies (s) and statuses (-1: no answer)."""
    n = int(rate * seconds)
    latencies, statuses = [0.0] * n, [0] * n
    due = iter(range(n))
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def client() -> None:
        while True:
            with lock:
                i = next(due, None)
            if i is None:
                return
            scheduled = start + i / rate
            time.sleep(max(0.0, scheduled - time.perf_counter()))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a new client's connection each time
            try:
                conn.request("POST", "/v1/jobs", json.dumps({**BODY, "seed": i}), headers)
                response = conn.getresponse()
                response.read()
                statuses[i] = response.status
            except OSError:
                statuses[i] = -1
            finally:
                conn.close()
            latencies[i] = time.perf_counter() - scheduled

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies, statuses


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if pid in stats:
            total += int(stats[pid][11]) + int(stats[pid][12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")
