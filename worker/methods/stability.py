"""Seed stability of a stochastic method (lime, smoothgrad, shap's kernel algorithm): asked for by the method's
parameter ``stability: true`` (off by default: it triples the method's cost).

The method runs with ``SEEDS`` seeds, the job's seed s and s + 1, s + 2 (the first run is the result itself), each as
`explain` runs it (``torch.manual_seed`` first); ``spearman`` is the mean over the pairs of runs of Spearman's ρ
between their scores on the non-special tokens (1 = the same ranking whatever the seed).

JSON (added to the method's part): ``"stability": {"seeds": [s, s+1, s+2], "spearman": mean ρ}``.
"""
from __future__ import annotations

import itertools
import statistics
from typing import Any

import torch

from worker.methods.base import Method, Target
from worker.models.base import Adapter, Encoding

SEEDS = 3


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's ρ (Pearson correlation of the ranks; ties broken by position)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp_min(1e-30))


def stability(method: Method, adapter: Adapter, item: Encoding, target: Target | None, params: dict[str, Any],
              layers: list[str] | None, seed: int, scores: list[float]) -> dict[str, Any]:
    """The stability document of one item whose result at `seed` has `scores` (module docstring)."""
    seeds = [seed + i for i in range(SEEDS)]
    runs = [torch.tensor(scores, dtype=torch.float64)]
    for other in seeds[1:]:
        torch.manual_seed(other)
        out = method.run(adapter, item, target, params, layers=layers, seed=other)
        runs.append(torch.tensor(out.json["scores"], dtype=torch.float64))
    keep = ~torch.tensor(item.special[0], dtype=torch.bool)
    rhos = [spearman(a[keep], b[keep]) for a, b in itertools.combinations(runs, 2)]
    return {"seeds": seeds, "spearman": statistics.fmean(rhos)}
