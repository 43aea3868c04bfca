"""A Redis and a PostgreSQL of the test's own, on free ports, that the test may stop, kill and restart.

The shared services (127.0.0.1:5432 and :6379) are never touched: each fault test starts its own processes here,
kills only those (by the PIDs it started), and removes their files afterwards."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port, wait_for


class OwnRedis:
    """redis-server on a free port, no persistence: a restart comes back empty, as a lost broker would."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = Path(tempfile.mkdtemp(prefix="lantern-chaos-redis-"))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")])
        wait_for(self.ping, 20, "the test's Redis")

    def ping(self) -> bool:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
        return out.stdout.strip() == "PONG"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def llen(self, key: str) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "llen", key], capture_output=True, text=True)
        return int(out.stdout.strip())

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found[-1]


class OwnPostgres:
    """A PostgreSQL server process of its own (initdb in a temporary directory, run as the postgres user, since
    initdb refuses root), trust authentication on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lantern-chaos-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                           "-E", "UTF8"])

    def _as_postgres(self, cmd: list[str]) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(prefix + cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        self._as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "pg.log"),
                           "-w", "-t", "60", "start"])

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when the database host goes away."""
        if (self.data / "postmaster.pid").exists():
            self._as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])

    def close(self) -> None:
        try:
            self.stop()
        finally:
            time.sleep(0.2)
            shutil.rmtree(self.dir, ignore_errors=True)
