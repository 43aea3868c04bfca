"""Side-by-side speed checks (`make bench`). Each `bench_*.py` module defines `run(quick: bool) -> list[Row]`;
a Row compares two things measured in the same run and prints their ratio."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


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
