"""Normalised AOPC (Edin et al. 2024, "Normalized AOPC: fixing misleading faithfulness metrics for feature
attribution explainability"): a ranking's comprehensiveness and sufficiency placed between the lowest and the highest
value any ranking reaches on this input, so that numbers compare across inputs and models.

The exact bounds need every ranking; they are searched within a budget of forward passes instead. Comprehensiveness
masks the top k tokens, so its upper bound is searched by greedily masking, k = 1 … k_max (the largest bin), the token
whose masking lowers p(y) most given those already masked, and its lower bound by the token that lowers it least;
sufficiency keeps the top k, so its lower (best) bound greedily keeps the token that raises p(y) most given those kept,
its upper bound the one that raises it least. Each greedy search costs Σ_{s<k_max} (n − s) masked rows (n = the
input's non-special tokens), the four together about 1.5·n² for k_max = n/2 (n = 20: 620 rows, in passes of up to
``BATCH`` rows, fewer for long inputs: ``TOKENS_PER_PASS``). Above ``BUDGET`` rows the searches rank the tokens once instead, by each token's effect alone
(masked alone for comprehensiveness, kept alone for sufficiency: 2·n rows), and the greedy order is that ranking.
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

from worker.methods.perturb import candidates, masked_probabilities
from worker.models.base import Adapter, Encoding

BUDGET = 256  # masked rows for the four searches of one input (greedy up to n = 13 tokens)
BATCH = 256  # rows per forward pass, at most
TOKENS_PER_PASS = 8192  # and at most this many tokens per pass: memory grows with rows × length² in attention


def rows_per_pass(one: Encoding) -> int:
    """Rows per forward pass for this input: BATCH, fewer for long inputs (512 tokens: 16 rows)."""
    return max(1, min(BATCH, TOKENS_PER_PASS // max(1, len(one.tokens[0]))))


@dataclass(frozen=True)
class Bounds:
    """p(x) minus p(masked) for the best and worst rankings found, per bin: comprehensiveness and sufficiency."""

    comprehensiveness: tuple[float, float]  # (low, high) AOPC
    sufficiency: tuple[float, float]
    rows: int  # masked rows evaluated
    search: str  # "greedy" or "single"


def _greedy(adapter: Adapter, one: Encoding, index: torch.Tensor, cand: torch.Tensor, ks: Sequence[int],
            keep: bool, lowest: bool) -> tuple[list[float], int]:
    """p(y) after each k of `ks` in a greedy order: at each step the candidate whose masking (keep=False) or keeping
    (keep=True) gives the lowest (lowest=True) or highest p(y), given the earlier choices."""
    T, left, rows = len(one.tokens[0]), cand.tolist(), 0
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
        p = masked_probabilities(adapter, one, drop, index, rows_per_pass(one)).double().cpu()
        rows += len(left)
        best = int(p.argmin() if lowest else p.argmax())
        chosen.append(left.pop(best))
        after[step + 1] = float(p[best])
    return [after[k] for k in ks], rows


def _single(adapter: Adapter, one: Encoding, index: torch.Tensor, cand: torch.Tensor, ks: Sequence[int],
            keep: bool) -> tuple[list[float], list[float], int]:
    """p(y) at each k of `ks` for the tokens ranked once by their effect alone, in both directions."""
    T, n = len(one.tokens[0]), len(cand)
    alone = torch.zeros(n, T, dtype=torch.bool)
    for r, t in enumerate(cand.tolist()):
        if keep:
            alone[r, cand] = True
            alone[r, t] = False
        else:
            alone[r, t] = True
    effect = masked_probabilities(adapter, one, alone, index, rows_per_pass(one)).double().cpu()
    ends = []
    for order in (cand[effect.argsort()], cand[effect.argsort(descending=True)]):
        drop = torch.zeros(len(ks), T, dtype=torch.bool)
        for r, k in enumerate(ks):
            if keep:
                drop[r, order[k:]] = True
            else:
                drop[r, order[:k]] = True
        ends.append(masked_probabilities(adapter, one, drop, index, rows_per_pass(one)).double().cpu().tolist())
    return ends[0], ends[1], n + 2 * len(ks)


def search(adapter: Adapter, one: Encoding, index: torch.Tensor, ks: Sequence[int], full: float) -> Bounds:
    """The AOPC bounds of item 0 over rankings (module docstring), p(x) = `full`."""
    cand = candidates(one)
    n, k_max = len(cand), max(ks)
    greedy_rows = 4 * sum(n - s for s in range(k_max))

    def aopc(p: list[float]) -> float:
        return sum(full - v for v in p) / len(p)

    if greedy_rows <= BUDGET:
        found = {}
        for name, keep, lowest in (("comp_high", False, True), ("comp_low", False, False),
                                   ("suff_low", True, False), ("suff_high", True, True)):
            found[name], _ = _greedy(adapter, one, index, cand, ks, keep, lowest)
        return Bounds((aopc(found["comp_low"]), aopc(found["comp_high"])),
                      (aopc(found["suff_low"]), aopc(found["suff_high"])), greedy_rows, "greedy")
    lowest_first, highest_first, rows = _single(adapter, one, index, cand, ks, keep=False)
    kept_low, kept_high, more = _single(adapter, one, index, cand, ks, keep=True)
    return Bounds((aopc(highest_first), aopc(lowest_first)), (aopc(kept_high), aopc(kept_low)), rows + more,
                  "single")


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

    def get(self, adapter: Adapter, one: Encoding, index: torch.Tensor, ks: Sequence[int], full: float) -> Bounds:
        key = (adapter.name, adapter.revision, tuple(one.input_ids[0].tolist()), int(index[0]), tuple(ks))
        if key not in self.items:
            if len(self.items) >= self.size:
                self.items.pop(next(iter(self.items)))
            self.items[key] = search(adapter, one, index, ks, full)
        return self.items[key]


CACHE = BoundsCache()
