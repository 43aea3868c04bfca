"""Faithfulness of a token ranking: ERASER's AOPC comprehensiveness and sufficiency (DeYoung et al. 2020), attached by
`explain` to every token-scoring method (docs/extending.md).

Let p(·) be the model's probability of the target class y, x the input, and n its number of non-special tokens.
For each bin b in ``BINS`` (1, 5, 10, 20, 50 % of the tokens), k_b = ceil(b·n) (at least 1) and r_b = the k_b tokens
with the highest scores (ties: earlier token first). Specials are never removed. A token is removed by replacing its
id with the adapter's mask id (``Adapter.mask``; [MASK] for Hugging Face models), so lengths and positions stay.

    comprehensiveness = mean_b [p(x) − p(x with r_b masked)]            (higher = the top tokens matter)
    sufficiency       = mean_b [p(x) − p(x with all but r_b masked)]    (lower = the top tokens suffice)

(AOPC = the mean over the bins.) ``normalized`` places both between the lowest and highest AOPC found over rankings
(Edin et al. 2024; worker/methods/aopc_bounds.py: the search, its budget and cost).
The same two numbers for a random ranking of the non-special tokens (a permutation
drawn from a generator seeded with the job's seed), and ``lift`` = comprehensiveness − random comprehensiveness.
The 1 + 4·|bins| masked variants and the bound search's rows run in shared passes: ``faithfulness_batch`` does all
items of a batch at once (worker/methods/masked_rows.py: padded passes, each row an item already evaluated run once),
and ``faithfulness`` is that for one item; the values are the same either way up to float rounding.

How much of this a request asks for is its ``faithfulness`` level (``LEVELS``, docs/api.md): ``full`` all of it (the
default), ``basic`` everything but the bound search (``normalized`` is null: the 1 + 4·|bins| variants only, where the
search adds 2n + 4·|bins| rows or more), ``none`` nothing (no document: the method's part has no ``faithfulness``, as
on a headless model).

Result (docs/extending.md keys, plus ``k`` and per-bin values)::

    {"bins": [0.01, 0.05, 0.1, 0.2, 0.5], "comprehensiveness": x, "sufficiency": x,
     "random": {"comprehensiveness": x, "sufficiency": x}, "lift": x,
     "normalized": {"comprehensiveness": x, "sufficiency": x, "random": {...}, "bounds": {...}, "search", "rows"},
     "k": [k_b ...], "probability": p(x), "per_bin": {"comprehensiveness": [...], "sufficiency": [...],
     "random_comprehensiveness": [...], "random_sufficiency": [...]}}
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from worker.methods.aopc_bounds import CACHE, Bounds, bounds, normalized, search_steps
from worker.methods.masked_rows import Rounds, drive, once, together
from worker.methods.perturb import candidates
from worker.models.base import Adapter, Encoding

BINS = (0.01, 0.05, 0.1, 0.2, 0.5)
FULL, BASIC, NONE = "full", "basic", "none"
LEVELS = (FULL, BASIC, NONE)  # the request option `faithfulness` (module docstring)


def top_k(b: float, n: int) -> int:
    """Tokens in bin b of n candidates: ceil(b·n), at least 1 (the small epsilon absorbs float noise like 0.1·30)."""
    return max(1, math.ceil(b * n - 1e-9))


def ranking(scores: Sequence[float], encoding: Encoding) -> torch.Tensor:
    """The non-special token indices of item 0, highest score first (stable: ties keep token order)."""
    cand = candidates(encoding)
    values = torch.as_tensor(list(scores), dtype=torch.float64)[cand]
    values = torch.nan_to_num(values, nan=-math.inf)
    return cand[torch.argsort(-values, stable=True)]


def faithfulness(
    adapter: Adapter, encoding: Encoding, scores: Sequence[float], index: torch.Tensor, seed: int = 0,
    bins: Sequence[float] = BINS, level: str = FULL,
) -> dict[str, Any] | None:
    """The faithfulness document of a token ranking of item 0 (module docstring); None when the model has no head
    or cannot mask tokens, or at level ``none`` (then faithfulness is omitted from the result)."""
    if index is None:
        return None
    return faithfulness_batch(adapter, encoding.item(0), [scores], index[:1], seed, bins, level)[0]


def faithfulness_batch(
    adapter: Adapter, encoding: Encoding, scores: Sequence[Sequence[float] | None], index: torch.Tensor | None,
    seed: int = 0, bins: Sequence[float] = BINS, level: str = FULL, probability: torch.Tensor | None = None,
) -> list[dict[str, Any] | None]:
    """`faithfulness` of every item i of `encoding` (ranking scores[i], target index[i]; None scores: skipped), its
    masked variants and the bound searches of all items in shared passes (worker/methods/masked_rows.py); each
    document equals the item's own `faithfulness` up to float rounding. `level` (``LEVELS``): ``basic`` runs no
    bound search (``normalized`` null), ``none`` nothing (every document None). `probability`: p(x) of each item's
    target from a pass the caller ran already (`explain`'s prediction), so that row 0 is not run again."""
    if level not in LEVELS:  # the request was validated; a wrong level here is a caller's bug, not less work
        raise ValueError(f"faithfulness level {level!r}: one of {LEVELS}")
    out: list[dict[str, Any] | None] = [None] * len(encoding)
    if level == NONE or not adapter.has_head or adapter.mask_token_id is None or index is None:
        return out
    plans = {i: _Plan(encoding.item(i), s, seed, bins) for i, s in enumerate(scores) if s is not None}
    plans = {i: plan for i, plan in plans.items() if plan.n > 0}
    searched = level == FULL  # basic leaves even cached bounds out: a document must not depend on earlier jobs
    keys = {i: CACHE.key(adapter, plan.one, index[i : i + 1], plan.ks) for i, plan in plans.items()}
    cached = {i: CACHE.lookup(keys[i]) if searched else None for i in plans}
    unmasked = None if probability is None else {i: float(probability[i]) for i in plans}
    done = drive(adapter, encoding, index, {i: plan.steps(searched and cached[i] is None)
                                            for i, plan in plans.items()}, unmasked)
    for i, plan in plans.items():
        p, found = done[i]
        if searched:  # one search per input, for all methods
            out[i] = plan.document(p, cached[i] or CACHE.put(keys[i], bounds(found, float(p[0]))))
        else:
            out[i] = plan.document(p, None)
    return out


class _Plan:
    """The masked variants of one item's ranking: row 0 nothing masked, then for the method's ranking and the random
    one the top k masked (comprehensiveness) and all but the top k masked (sufficiency), for each bin's k."""

    def __init__(self, one: Encoding, scores: Sequence[float], seed: int, bins: Sequence[float]):
        self.one, self.bins = one, list(bins)
        self.order = ranking(scores, one)
        self.n = len(self.order)
        generator = torch.Generator().manual_seed(int(seed))
        self.random_order = candidates(one)[torch.randperm(self.n, generator=generator)] if self.n else self.order
        self.ks = [top_k(b, self.n) for b in bins]

    def rows(self) -> torch.Tensor:
        T = len(self.one.tokens[0])
        rows = [torch.zeros(T, dtype=torch.bool)]  # row 0: nothing masked
        for ranked in (self.order, self.random_order):
            for k in self.ks:  # comprehensiveness: the top k masked
                row = torch.zeros(T, dtype=torch.bool)
                row[ranked[:k]] = True
                rows.append(row)
            for k in self.ks:  # sufficiency: every candidate but the top k masked
                row = torch.zeros(T, dtype=torch.bool)
                row[ranked[k:]] = True
                rows.append(row)
        return torch.stack(rows)

    def steps(self, search: bool) -> Rounds:
        """The variants' probabilities, and the bound search's `Found` when `search` (else None), in shared rounds."""
        if not search:
            return (yield from once(self.rows())), None
        p, found = yield from together([once(self.rows()), search_steps(self.one, self.ks)])
        return p, found

    def document(self, p: torch.Tensor, found: Bounds | None) -> dict[str, Any]:
        """The item's document; `found` None (level ``basic``): ``normalized`` is null."""
        full, rest = p[0], p[1:].view(2, 2, len(self.ks))  # (ranking, comp/suff, bin)
        drop = (full - rest).tolist()

        def aopc(values: list[float]) -> float:
            return float(sum(values) / len(values))

        comprehensiveness, sufficiency = aopc(drop[0][0]), aopc(drop[0][1])
        random = {"comprehensiveness": aopc(drop[1][0]), "sufficiency": aopc(drop[1][1])}
        return {
            "bins": self.bins,
            "comprehensiveness": comprehensiveness,
            "sufficiency": sufficiency,
            "random": random,
            "lift": comprehensiveness - random["comprehensiveness"],
            "normalized": None if found is None else normalized(found, comprehensiveness, sufficiency, random),
            "k": self.ks,
            "probability": float(full),
            "per_bin": {"comprehensiveness": drop[0][0], "sufficiency": drop[0][1],
                        "random_comprehensiveness": drop[1][0], "random_sufficiency": drop[1][1]},
        }
