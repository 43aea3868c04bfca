"""Masked rows of several items in shared forward passes: what faithfulness and the AOPC bound search run on.

A *step generator* describes the rounds of one item's work: it yields an N×T bool tensor (each row: the tokens of
that item to mask, T = the item's own length), receives the N probabilities p(y | masked row) (float64, CPU) and
eventually returns its result. ``drive`` runs the generators of all items of a batch round by round: each round's
rows of every item are evaluated together, sorted by length and packed into padded passes of at most ``BATCH`` rows
and ``TOKENS_PER_PASS`` tokens (padding as the adapter pads a batch, so a row's value is its unpadded value up to
float rounding), and a row that an item already evaluated during the drive is not run again (the searches and the
faithfulness variants share rows: every token masked alone, every token kept alone, …). Fewer, fuller passes are
the point: on a CPU a small pass of MiniLM costs several rows' worth of fixed overhead.
"""
from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import torch

from worker.models.base import Adapter, Encoding

BATCH = 256  # rows per forward pass, at most
# and at most this many tokens (rows × padded length): bounds memory (attention grows with length²) and, on a CPU,
# keeps a pass's activations in cache: 16 RT sentences' faithfulness took 54-88 s in passes of 2,048 tokens, 83-85 s
# in passes of 8,192 (16 % padding, vs 3.5 %), 78-80 s item by item (issue 20, a loaded 2-core box)
TOKENS_PER_PASS = 2048

Rounds = Generator[torch.Tensor, torch.Tensor, Any]


def once(rows: torch.Tensor) -> Rounds:
    """One round: the probabilities of `rows`."""
    return (yield rows)


def together(steps: Sequence[Rounds]) -> Rounds:
    """Several step generators of one item as one: each round yields all their rows at once; returns their results
    in order."""
    results: list[Any] = [None] * len(steps)
    pending: dict[int, torch.Tensor] = {}
    for n, gen in enumerate(steps):
        try:
            pending[n] = next(gen)
        except StopIteration as stop:
            results[n] = stop.value
    while pending:
        answers = (yield torch.cat(list(pending.values()))).split([len(rows) for rows in pending.values()])
        for (n, _), part in zip(list(pending.items()), answers, strict=True):
            try:
                pending[n] = steps[n].send(part)
            except StopIteration as stop:
                results[n] = stop.value
                del pending[n]
    return results


def drive(adapter: Adapter, encoding: Encoding, index: torch.Tensor, steps: dict[int, Rounds],
          unmasked: Mapping[int, float] | None = None) -> dict[int, Any]:
    """Run each item's step generator (item i of `encoding`, target `index[i]`) to its end; returns their results.
    Each round evaluates the rows of all items still running in shared passes (module docstring). `unmasked`: p(y)
    of items with nothing masked, known already (the prediction's pass): that row is not run again."""
    results: dict[int, Any] = {}
    pending: dict[int, torch.Tensor] = {}
    memo: dict[int, dict[bytes, float]] = {i: {} for i in steps}
    for i, p in (unmasked or {}).items():
        if i in memo:
            memo[i][_key(torch.zeros(len(encoding.tokens[i]), dtype=torch.bool))] = float(p)
    for i, gen in steps.items():
        try:
            pending[i] = next(gen)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        answers = probabilities(adapter, encoding, index, pending, memo)
        for i in list(pending):
            try:
                pending[i] = steps[i].send(answers[i])
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
    return results


def probabilities(adapter: Adapter, encoding: Encoding, index: torch.Tensor, rows: dict[int, torch.Tensor],
                  memo: dict[int, dict[bytes, float]]) -> dict[int, torch.Tensor]:
    """p(y) of every row of every item (float64), running only the rows not in `memo` (which gains them)."""
    keys = {i: [_key(r) for r in drop.cpu()] for i, drop in rows.items()}
    new: dict[tuple[int, bytes], torch.Tensor] = {}
    for i, drop in rows.items():
        for key, row in zip(keys[i], drop, strict=True):
            if key not in memo[i]:
                new.setdefault((i, key), row)
    todo = sorted(new, key=lambda ik: len(encoding.tokens[ik[0]]))  # similar lengths share a pass: little padding
    for batch in packed([len(encoding.tokens[i]) for i, _ in todo]):
        chosen = [todo[n] for n in batch]
        values = _run(adapter, encoding, index, [i for i, _ in chosen], [new[ik] for ik in chosen])
        for (i, key), value in zip(chosen, values.tolist(), strict=True):
            memo[i][key] = value
    return {i: torch.tensor([memo[i][key] for key in keys[i]], dtype=torch.float64) for i in rows}


def _key(row: torch.Tensor) -> bytes:
    """A CPU bool row as the memo's key."""
    return bytes(row.numpy())


def packed(lengths: list[int]) -> list[list[int]]:
    """Consecutive positions of `lengths` (sorted) in passes of at most BATCH rows and TOKENS_PER_PASS tokens
    (rows × the longest; a row longer than that alone)."""
    passes: list[list[int]] = []
    width = 0
    for n, length in enumerate(lengths):
        if passes and len(passes[-1]) < BATCH and (len(passes[-1]) + 1) * max(width, length) <= TOKENS_PER_PASS:
            passes[-1].append(n)
            width = max(width, length)
        else:
            passes.append([n])
            width = length
    return passes


def _run(adapter: Adapter, encoding: Encoding, index: torch.Tensor, items: list[int],
         drops: list[torch.Tensor]) -> torch.Tensor:
    """p(y) of one pass: row r is item items[r] with the tokens of drops[r] masked (float64, CPU)."""
    batch = encoding.subset(items)  # padded to the pass's longest item, as the adapter pads
    drop = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for r, row in enumerate(drops):
        drop[r, : len(row)] = row
    masked = adapter.mask(batch, drop)
    with torch.no_grad():
        probs = adapter.forward(adapter.embed(masked), masked).head_logits().softmax(-1)
    targets = index.to(probs.device)[torch.tensor(items, device=probs.device)]
    return probs.gather(1, targets.view(-1, 1)).squeeze(1).double().cpu()
