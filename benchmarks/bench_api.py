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

import argparse
import asyncio
import collections
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

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
        settings = Settings.from_env(env={}, data_dir=tmp, rate_per_minute=0, max_in_flight=0)
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
    rows, at_200 = [], dict[str, float]()
    for rate in (50, 200) if quick else RATES:
        result = drive_fresh_api(rate, seconds)
        at_200 = result if rate == 200 else at_200
        rows.append(Row(f"open-loop POST /v1/jobs at {rate} req/s, {seconds:.0f} s: p99", "ms", result["p99"] * 1e3,
                        20.0 if rate == 200 else None, "target" if rate == 200 else "", higher_is_better=False,
                        note=summary(result)))
    return [*rows, worker_class_row(at_200, seconds)]


# gunicorn's other worker class, driven at 200 req/s beside the default (service/gunicorn_conf.py) in the same run
OTHER_WORKERS = ("sync workers (GUNICORN_CMD_ARGS)", "--worker-class sync --threads 1")  # threads > 1 makes sync gthread


def worker_class_row(default: dict[str, float], seconds: float) -> Row:
    label, args = OTHER_WORKERS
    other = drive_fresh_api(200, seconds, args)
    return Row(f"open-loop at 200 req/s, {label}: p99", "ms", other["p99"] * 1e3, default["p99"] * 1e3,
               "the default (gthread)", higher_is_better=False,
               note=f"p50 {other['p50'] * 1e3:.1f} ms vs {default['p50'] * 1e3:.1f}, {other['errors']} errors, API CPU "
                    f"{other['cpu']:.2f} cores vs {default['cpu']:.2f}; ratio < 1: sync is slower")


def summary(result: dict[str, float]) -> str:
    return (f"p50 {result['p50'] * 1e3:.1f} ms, max {result['max'] * 1e3:.0f} ms, {result['errors']} errors, "
            f"{result['stalls']} over 1 s, API CPU {result['cpu']:.2f} cores ({result['cpu_ms']:.2f} ms a request), "
            f"load generator "
            f"{result['generator_cpu']:.2f} cores, {result['connections']} connections, "
            f"{result['retried']} resent after a keep-alive close")


def drive_fresh_api(rate: float, seconds: float, gunicorn_args: str = "") -> dict[str, float]:
    """A new gunicorn API (2 workers) on a scratch database, driven open-loop from its first request.
    `gunicorn_args`: more of gunicorn's options (its GUNICORN_CMD_ARGS), e.g. another worker class."""
    from tests.helpers import Stack, api_ready, wait_for

    with ScratchDatabase() as db_url, tempfile.TemporaryDirectory() as tmp:
        tag = Path(tmp).name[-8:]
        env = {"LANTERN_DATABASE_URL": db_url, "LANTERN_BROKER_URL": REDIS, "LANTERN_DATA_DIR": tmp,
               "LANTERN_JOB_QUEUE": f"bench-gpu-{tag}", "LANTERN_CPU_QUEUE": f"bench-cpu-{tag}",
               "LANTERN_RATE_PER_MINUTE": "0", "LANTERN_MAX_IN_FLIGHT": "0",  # one tenant at 200 req/s: limits off
               "LANTERN_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "GUNICORN_CMD_ARGS": gunicorn_args}
        stack = Stack({**os.environ, **env}, Path(tmp))
        try:
            api = stack.spawn("serve", "--bind", f"127.0.0.1:{stack.port}", "--workers", "2", name="api")
            wait_for(lambda: api_ready(stack.url), 90, "the API to be ready")
            key = stack.key("bench")
            cpu0, t0 = tree_cpu_seconds(api.pid), time.perf_counter()
            run = open_loop(stack.port, key, rate, seconds)
            cpu_seconds, wall = tree_cpu_seconds(api.pid) - cpu0, time.perf_counter() - t0
        finally:
            stack.stop()
            import redis

            redis.Redis.from_url(REDIS).delete(env["LANTERN_JOB_QUEUE"], env["LANTERN_CPU_QUEUE"])
    latencies, ordered = run["latencies"], sorted(run["latencies"])
    return {"p50": pct(ordered, 0.5), "p99": pct(ordered, 0.99), "max": ordered[-1], "cpu": cpu_seconds / wall,
            "cpu_ms": cpu_seconds * 1e3 / len(latencies),
            "generator_cpu": run["cpu"] / run["wall"], "connections": run["connections"], "retried": run["retried"],
            "errors": sum(1 for s in run["statuses"] if s != 202), "stalls": sum(1 for x in latencies if x > 1.0)}


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def open_loop(port: int, key: str, rate: float, seconds: float, max_connections: int = 256) -> dict[str, Any]:
    """POST /v1/jobs at `rate` per second for `seconds`: request i is due at start + i / rate and its latency runs
    from then to its answer's last byte. Returns latencies (s), statuses (-1: no answer), the generator's own CPU
    seconds and wall seconds, and how many connections it opened."""
    requests = [_raw_post(port, key, i) for i in range(int(rate * seconds))]  # serialised before the clock starts
    return asyncio.run(_Driver(port, requests, rate, max_connections).run())


def _raw_post(port: int, key: str, seed: int) -> bytes:
    body = json.dumps({**BODY, "seed": seed}).encode()
    return (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time; a server that answers `Connection: close`
    (gunicorn's sync workers) or drops it idle sends the next request down a new connection."""

    def __init__(self, driver: _Driver) -> None:
        self.driver, self.buffer = driver, b""
        self.transport: Any = None
        self.current: int | None = None  # the request in flight on it
        self.reused = False  # it answered before: a close before any byte of an answer is the keep-alive race

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, i: int) -> None:
        self.current, self.buffer = i, b""
        self.transport.write(self.driver.requests[i])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.current is None:
            return
        head = self.buffer[:head_end].lower()
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]) if b"content-length:" in head else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        i, self.current, self.reused = self.current, None, True
        keep = b"connection: close" not in head
        self.driver.answered(i, int(head[9:12]), self if keep else None)
        if not keep:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver.lost(self)
        if self.current is not None:
            i, self.current = self.current, None
            self.driver.failed(i, retry=self.reused and not self.buffer)


class _Driver:
    """The open loop on one asyncio thread: a timer per due request, idle keep-alive connections reused, new ones
    opened up to `max_connections` (beyond that a request waits for a free one, and its wait counts)."""

    def __init__(self, port: int, requests: list[bytes], rate: float, max_connections: int) -> None:
        self.port, self.requests, self.rate, self.max_connections = port, requests, rate, max_connections
        n = len(requests)
        self.latencies, self.statuses = [0.0] * n, [0] * n
        self.idle: list[_Connection] = []
        self.waiting: collections.deque[int] = collections.deque()
        self.open_connections = self.opened = self.retried = self.remaining = 0
        self.start = 0.0

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.done, self.remaining = loop.create_future(), len(self.requests)
        cpu0, self.start = time.process_time(), loop.time() + 0.2
        loop.call_at(self.start, self.fire, 0)
        await self.done
        wall = loop.time() - self.start
        for conn in self.idle:
            conn.transport.close()
        return {"latencies": self.latencies, "statuses": self.statuses, "cpu": time.process_time() - cpu0,
                "wall": wall, "connections": self.opened, "retried": self.retried}

    def fire(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        if i + 1 < len(self.requests):
            loop.call_at(self.start + (i + 1) / self.rate, self.fire, i + 1)
        self.dispatch(i)

    def dispatch(self, i: int) -> None:
        if self.idle:
            self.idle.pop().send(i)
        elif self.open_connections < self.max_connections:
            self.open_connections += 1
            self.opened += 1
            asyncio.get_running_loop().create_task(self.connect(i))
        else:
            self.waiting.append(i)

    async def connect(self, i: int) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(lambda: _Connection(self), "127.0.0.1",
                                                                         self.port)
        except OSError:
            self.open_connections -= 1
            self.finish(i, -1)
            return
        conn.send(i)

    def answered(self, i: int, status: int, conn: _Connection | None) -> None:
        self.finish(i, status)
        if conn is not None:
            if self.waiting:
                conn.send(self.waiting.popleft())
            else:
                self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        self.open_connections -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and self.open_connections < self.max_connections:
            self.dispatch(self.waiting.popleft())

    def failed(self, i: int, retry: bool) -> None:
        """A reused connection closed before any byte of its answer (the server's keep-alive ran out as the request
        went): the request was not read, so it goes again on a new connection, as HTTP clients do; counted."""
        if retry:
            self.retried += 1
            self.dispatch(i)
        else:
            self.finish(i, -1)

    def finish(self, i: int, status: int) -> None:
        self.statuses[i], self.latencies[i] = status, asyncio.get_running_loop().time() - (self.start + i / self.rate)
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set_result(None)


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


def main() -> int:
    """`python -m benchmarks.bench_api [--rates 50,200] [--seconds 30] [--gunicorn-args ...]`: the open-loop rows
    alone, one fresh API per rate, with the load average before each."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--gunicorn-args", action="append", default=None,
                        help="gunicorn options (GUNICORN_CMD_ARGS); repeat it to alternate several per rate")
    args = parser.parse_args()
    for rate in (float(r) for r in args.rates.split(",")):
        for options in args.gunicorn_args or [""]:
            load = Path("/proc/loadavg").read_text().split()[0]
            result = drive_fresh_api(rate, args.seconds, options)
            print(f"{rate:5.0f} req/s [{options or 'default'}] (load {load}): p99 {result['p99'] * 1e3:.1f} ms, "
                  f"{summary(result)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
