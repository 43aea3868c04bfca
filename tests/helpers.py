"""Test helpers shared by several test modules (fixtures live in conftest.py)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(tmp: Path, backend: str = "sqlite", pg: str | None = None, redis: str | None = None,
                  **overrides):
    """Settings for a backend: sqlite = the embedded default; postgres = Postgres + Redis (production shape).
    Queue names are unique per call, so runs never read each other's messages on a shared Redis."""
    from service.config import Settings

    tag = uuid.uuid4().hex[:8]
    values = dict(data_dir=str(tmp), job_queue=f"gpu-{tag}", cpu_queue=f"cpu-{tag}")
    if backend == "postgres":
        values.update(database_url=pg, broker_url=redis)
    values.update(overrides)
    return Settings.from_env(env={}, **values)


class Api:
    """A Flask test client with a tenant's key; `.as_(other)` talks as another tenant."""

    def __init__(self, app, key: str) -> None:
        self.app, self.client, self.key = app, app.test_client(), key

    def _h(self, headers):
        return {"Authorization": f"Bearer {self.key}", **(headers or {})}

    def get(self, path, headers=None, **kw):
        return self.client.get(path, headers=self._h(headers), **kw)

    def post(self, path, headers=None, **kw):
        return self.client.post(path, headers=self._h(headers), **kw)

    def delete(self, path, headers=None, **kw):
        return self.client.delete(path, headers=self._h(headers), **kw)

    def as_(self, key: str) -> Api:
        return Api(self.app, key)


# --- the production shape in real processes (tests/e2e, tests/deploy, benchmarks) ---------------------------

LANTERN = [sys.executable, "-m", "service.cli"]


def wait_for(check, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def is_ancestor(pid: int, child: int) -> bool:
    """Whether process `pid` is `child` or one of its ancestors (a worker's main process and its pool child)."""
    while child > 1:
        if child == pid:
            return True
        child = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


def api_ready(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Stack:
    """Processes started with `lantern ...` in their own process groups; logs under tmp/<name>.log."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp, self.procs = env, tmp, []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers: list[subprocess.Popen] = []

    def spawn(self, *args: str, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(LANTERN + list(args), env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)  # own process group: a SIGKILL takes its pool children
        proc.name = name
        self.procs.append(proc)
        return proc

    def key(self, tenant: str) -> str:
        out = subprocess.run(LANTERN + ["keys", "create", "--tenant", tenant], env=self.env, check=True,
                             capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + self.log(p.name)[-3000:] for p in self.procs)


@contextlib.contextmanager
def production_stack(pg_url: str, redis_url: str, tmp: Path, *, api_workers: int = 2, workers: int = 2,
                     env: dict[str, str] | None = None, worker_env=None, concurrency: int = 1,
                     s3_process: bool = False) -> Iterator[Stack]:
    """gunicorn API + Celery worker processes + PostgreSQL + Redis + an S3 server (moto): the production shape.
    Queue names and the bucket are unique per stack; `worker_env(n)` adds settings for worker n; `concurrency`:
    each worker's processes (Celery --concurrency). The S3 server runs in this process, or with `s3_process` in
    its own (a benchmark's: then it does not share this process's GIL with the load generator's threads)."""
    s3_port = free_port()
    with contextlib.ExitStack() as cleanup:  # whatever fails after a process started, that process is stopped
        s3 = _s3_server(s3_port, s3_process)
        cleanup.callback(s3.stop)
        yield from _stack_on(s3_port, pg_url, redis_url, tmp, api_workers, workers, env, worker_env, concurrency)


def _stack_on(s3_port: int, pg_url: str, redis_url: str, tmp: Path, api_workers: int, workers: int,
              env: dict[str, str] | None, worker_env, concurrency: int) -> Iterator[Stack]:
    """`production_stack`'s part after its S3 server started: the bucket, the API and the workers."""
    import boto3

    from service.client import Client
    from service.db import Database

    tag = uuid.uuid4().hex[:8]
    full_env = dict(os.environ, LANTERN_DATABASE_URL=pg_url, LANTERN_BROKER_URL=redis_url,
                    LANTERN_STORAGE_URL=f"s3://lantern-{tag}/objects",
                    LANTERN_S3_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
                    LANTERN_DATA_DIR=str(tmp / "data"), LANTERN_JOB_QUEUE=f"gpu-{tag}",
                    LANTERN_CPU_QUEUE=f"cpu-{tag}", LANTERN_LEASE_SECONDS="3", LANTERN_REAPER_INTERVAL="1",
                    LANTERN_REQUEUE_AFTER="600", AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                    HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    full_env.update(env or {})  # a test may override any of the above (e.g. a local store on a small disk)
    boto3.client("s3", endpoint_url=full_env["LANTERN_S3_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket=f"lantern-{tag}")
    st = Stack(full_env, tmp)
    try:
        st.spawn("serve", "--bind", f"127.0.0.1:{st.port}", "--workers", str(api_workers), name="api")
        st.workers = [st.spawn("worker", "--concurrency", str(concurrency), name=f"worker{n}",
                               env=worker_env(n) if worker_env else None) for n in range(workers)]
        wait_for(lambda: api_ready(st.url), 60, "the API to be ready")
        st.client = Client(st.url, st.key("e2e"))
        st.db = Database(pg_url)
        yield st
    except Exception:
        print(st.logs())
        raise
    finally:
        st.stop()


class _S3Process:
    """moto's S3 server as a process of its own (started and stopped by PID, like the stack's other processes)."""

    def __init__(self, port: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: self._listening(port), 30, "the S3 server to listen")
        except BaseException:
            self.stop()
            raise

    def _listening(self, port: int) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the S3 server exited at once (status {self.proc.returncode})")
        return _port_open(port)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _s3_server(port: int, own_process: bool) -> Any:
    """A started moto S3 server on `port` (anything with stop())."""
    if own_process:
        return _S3Process(port)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


@contextlib.contextmanager
def small_disk(size: str = "1m") -> Iterator[Path]:
    """A tmpfs of that size (a full disk, for real); skips where this process may not mount one."""
    import pytest

    where = Path(tempfile.mkdtemp(prefix="lantern-small-disk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True)
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode()[:200]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


@contextlib.contextmanager
def embedded_stack(tmp: Path) -> Iterator[Any]:
    """`lantern up` (SQLite, the server-less broker, local objects, one worker) in its own process group, as the
    demo starts it; yields `.url`, `.key` and `.proc`. LANTERN_* settings of this process are left out."""
    from types import SimpleNamespace

    from service.demo import start_embedded

    saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("LANTERN_")]}
    try:
        port = free_port()
        proc, key = start_embedded(tmp / "data", port)
    finally:
        os.environ.update(saved)
    stack = SimpleNamespace(url=f"http://127.0.0.1:{port}", key=key, proc=proc)
    try:
        wait_for(lambda: api_ready(stack.url), 60, "the embedded API to be ready")
        yield stack
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_here(api, runtime, body: dict) -> tuple[dict, set[str], str]:
    """Submit `body` through the API client `api`, run the job on this process's worker: the result document, the
    artifact names and the job's result.html."""
    from service.db import Job
    from service.jobs import artifacts_of
    from worker.runner import run_job

    resp = api.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    status = run_job(runtime, job_id, "w1")
    with runtime.db.session() as s:
        job = s.get(Job, job_id)
        assert status == "succeeded", job.error
        result, names = job.result["result"], {a.name for a in artifacts_of(s, job_id)}
    page = api.get(f"/v1/jobs/{job_id}/artifacts/result.html").data.decode()
    return result, names, page
