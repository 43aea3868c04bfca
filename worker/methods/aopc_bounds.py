"""Normalised AOPC (Edin et al. 2024, "Normalized AOPC: fixing misleading faithfulness metrics for feature
attribution explainability"): a ranking's comprehensiveness and sufficiency placed between the lowest and the highest
value any ranking reaches on this input, so that numbers compare across inputs and models.

The exact bounds need every ranking; they are searched within a budget of forward passes instead. Comprehensiveness
masks the top k tokens, so its upper bound is searched by greedily masking, k = 1 … k_max (the largest bin), the token
whose masking lowers p(y) most given those already masked, and its lower bound by the token that lowers it least;
sufficiency keeps the top k, so its lower (best) bound greedily keeps the token that raises p(y) most given those kept,
its upper bound the one that raises it least. Each greedy search costs Σ_{s<k_max} (n − s) masked rows (n = the
input's non-special tokens), the four together about 1.5·n² for k_max = n/2 (n = 20: 620 rows). Above ``BUDGET``
rows the searches rank the tokens once instead, by each token's effect alone (masked alone for comprehensiveness,
kept alone for sufficiency: 2·n rows), and the greedy order is that ranking (2·n + 4·|bins| rows in all).
The four searches advance together (one round per greedy step, two for the single ranking), and the rounds of all
items of a batch share padded passes with their faithfulness variants (worker/methods/masked_rows.py): a row that
the item already evaluated (each token masked or kept alone is also a k = 1 variant) runs once, so ``rows`` (what the
search asks for, as before) is more than it adds.
A bound is the best value among the searched rankings, the random ranking and the method's own ranking, so a method
that beats the search is the bound (normalised 1, never above). The bounds depend on the input and the target only:
`explain` computes them once per item and every method's faithfulness shares them (what each method adds: nothing).

    normalized comprehensiveness = (comp − comp_low) / (comp_high − comp_low)     (1 = the best ranking found)
    normalized sufficiency       = (suff_high − suff) / (suff_high − suff_low)     (1 = the best ranking found)

0 is the worst ranking found; ``random`` gives where the random ranking falls (about 0.5 for many inputs), the
reference for "random-like". Both are null when the bounds coincide (every ranking scores the same).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from worker.methods.masked_rows import Rounds, drive, together
from worker.methods.perturb import candidates
from worker.models.base import Adapter, Encoding

BUDGET = 256  # masked rows for the four searches of one input (greedy up to n = 12 tokens)


@dataclass(frozen=True)
class Bounds:
    """p(x) minus p(masked) for the best and worst rankings found, per bin: comprehensiveness and sufficiency."""

    comprehensiveness: tuple[float, float]  # (low, high) AOPC
    sufficiency: tuple[float, float]
    rows: int  # masked rows the search asks for (rows it shares with other work are run once)
    search: str  # "greedy" or "single"


@dataclass(frozen=True)
class Found:
    """p(y) at each k of the bins for the four searched rankings (what `bounds` turns into AOPC bounds)."""

    comp_high: list[float]  # masking the top k: the lowest p(y) found
    comp_low: list[float]
    suff_low: list[float]  # keeping the top k: the highest p(y) found
    suff_high: list[float]
    rows: int
    search: str


def _greedy(T: int, cand: torch.Tensor, ks: Sequence[int], keep: bool, lowest: bool) -> Rounds:
    """Rounds of one greedy search (masked rows in, p(y) back): p(y) after each k of `ks` in a greedy order: at each
    step the candidate whose masking (keep=False) or keeping (keep=True) gives the lowest (lowest=True) or highest
    p(y), given the earlier choices."""
    left = cand.tolist()
    chosen: list[int] = []
    after: dict[int, float] = {}
    for step in range(max(ks)):
        drop = torch.zeros(len(left), T, dtype=torch.bool)
        for r, t in enumerate(left):
            picked = [*chosen, t]
            if keep:
                drop[r, cand] = True
                drop[r, picked] = False
            else:
                drop[r, picked] = True
        p = yield drop
        best = int(p.argmin() if lowest else p.argmax())
        chosen.append(left.pop(best))
        after[step + 1] = float(p[best])
    return [after[k] for k in ks]


def _single(T: int, cand: torch.Tensor, ks: Sequence[int], keep: bool) -> Rounds:
    """Rounds giving p(y) at each k of `ks` for the tokens ranked once by their effect alone, in both directions."""
    n = len(cand)
    alone = torch.zeros(n, T, dtype=torch.bool)
    for r, t in enumerate(cand.tolist()):
        if keep:
            alone[r, cand] = True
            alone[r, t] = False
        else:
            alone[r, t] = True
    effect = yield alone
    drop = torch.zeros(2 * len(ks), T, dtype=torch.bool)
    for o, order in enumerate((cand[effect.argsort()], cand[effect.argsort(descending=True)])):
        for r, k in enumerate(ks):
            if keep:
                drop[o * len(ks) + r, order[k:]] = True
            else:
                drop[o * len(ks) + r, order[:k]] = True
    ends = (yield drop).tolist()
    return ends[: len(ks)], ends[len(ks) :]


def search_steps(one: Encoding, ks: Sequence[int]) -> Rounds:
    """Rounds of the bounds' search on item 0 (module docstring): all four searches advance together, one round per
    greedy step (two rounds for the single-pass ranking). Returns `Found`."""
    cand, T = candidates(one), len(one.tokens[0])
    n, k_max = len(cand), max(ks)
    greedy_rows = 4 * sum(n - s for s in range(k_max))
    if greedy_rows <= BUDGET:
        comp_high, comp_low, suff_low, suff_high = yield from together(
            [_greedy(T, cand, ks, keep, lowest) for keep, lowest in ((False, True), (False, False), (True, False),
                                                                      (True, True))])
        return Found(comp_high, comp_low, suff_low, suff_high, greedy_rows, "greedy")
    # each ranking by effect alone, lowest p(y) first and highest first
    (masked_lowest, masked_highest), (kept_lowest, kept_highest) = yield from together(
        [_single(T, cand, ks, keep=False), _single(T, cand, ks, keep=True)])
    return Found(masked_lowest, masked_highest, kept_highest, kept_lowest, 2 * (n + 2 * len(ks)), "single")


def bounds(found: Found, full: float) -> Bounds:
    """The AOPC bounds of the searched rankings, p(x) = `full`."""

    def aopc(p: list[float]) -> float:
        return sum(full - v for v in p) / len(p)

    return Bounds((aopc(found.comp_low), aopc(found.comp_high)), (aopc(found.suff_low), aopc(found.suff_high)),
                  found.rows, found.search)


def search(adapter: Adapter, one: Encoding, index: torch.Tensor, ks: Sequence[int], full: float) -> Bounds:
    """The AOPC bounds of item 0 over rankings (module docstring), p(x) = `full`."""
    one = one.item(0)
    found = drive(adapter, one, index[:1], {0: search_steps(one, ks)})[0]
    return bounds(found, full)


def normalized(bounds: Bounds, comprehensiveness: float, sufficiency: float,
               random: dict[str, float]) -> dict[str, Any]:
    """The `normalized` part of a faithfulness document: the method's and the random ranking's place between the
    bounds (widened to include both rankings), and the bounds themselves."""
    comp_low = min(bounds.comprehensiveness[0], comprehensiveness, random["comprehensiveness"])
    comp_high = max(bounds.comprehensiveness[1], comprehensiveness, random["comprehensiveness"])
    suff_low = min(bounds.sufficiency[0], sufficiency, random["sufficiency"])
    suff_high = max(bounds.sufficiency[1], sufficiency, random["sufficiency"])

    def place(comp: float, suff: float) -> dict[str, float | None]:
        return {"comprehensiveness": (comp - comp_low) / (comp_high - comp_low) if comp_high > comp_low else None,
                "sufficiency": (suff_high - suff) / (suff_high - suff_low) if suff_high > suff_low else None}

    return {**place(comprehensiveness, sufficiency),
            "random": place(random["comprehensiveness"], random["sufficiency"]),
            "bounds": {"comprehensiveness": [comp_low, comp_high], "sufficiency": [suff_low, suff_high]},
            "search": bounds.search, "rows": bounds.rows}


class BoundsCache:
    """The bounds of the inputs explained lately, so that every method of a request shares one search per item."""

    def __init__(self, size: int = 64):
        self.size, self.items = size, {}  # type: ignore[var-annotated]

    @staticmethod
    def key(adapter: Adapter, one: Encoding, index: torch.Tensor, ks: Sequence[int]) -> tuple[Any, ...]:
        return adapter.name, adapter.revision, tuple(one.input_ids[0].tolist()), int(index[0]), tuple(ks)

    def lookup(self, key: tuple[Any, ...]) -> Bounds | None:
        return self.items.get(key)

    def put(self, key: tuple[Any, ...], found: Bounds) -> Bounds:
        if key not in self.items and len(self.items) >= self.size:
            self.items.pop(next(iter(self.items)))
        self.items[key] = found
        return found

    def get(self, adapter: Adapter, one: Encoding, index: torch.Tensor, ks: Sequence[int], full: float) -> Bounds:
        key = self.key(adapter, one, index, ks)
        hit = self.lookup(key)
        return hit if hit is not None else self.put(key, search(adapter, one, index, ks, full))


CACHE = BoundsCache()
