"""Side-by-side speed checks (`make bench`). Each `bench_*.py` module defines `run(quick: bool) -> list[Row]`;
a Row compares two things measured in the same run and prints their ratio."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Row:
    name: str  # what is measured
    unit: str  # e.g. "items/s", "ms"
    ours: float
    baseline: float | None = None  # the side-by-side reference, measured in the same run
    baseline_name: str = ""
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0) or self.ours == 0:
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of `repeat` calls, in seconds (the first call warms caches and is not counted)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def device() -> str:
    """Where the benches that take it run their models: ``python -m benchmarks --device cuda`` (default cpu)."""
    return os.environ.get("LANTERN_BENCH_DEVICE", "cpu")


PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/0"


def services_up() -> bool:
    """PostgreSQL and Redis on 127.0.0.1, as `make test` has them."""
    import socket

    for port in (5432, 6379):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
    return True


class ScratchDatabase:
    """A PostgreSQL database made and migrated for one bench, dropped afterwards (`with ScratchDatabase() as url`)."""

    def __enter__(self) -> str:
        import os
        import uuid

        import psycopg

        from service.migrate import upgrade

        base = os.environ.get("LANTERN_TEST_PG", PG)
        self.admin = base.replace("postgresql+psycopg://", "postgresql://")
        self.name = f"lantern_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        url = base.rsplit("/", 1)[0] + f"/{self.name}"
        upgrade(url)
        return url

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
