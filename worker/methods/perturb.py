"""Helpers shared by the methods that change the input and look at the score: occlusion, LIME, the perturbation
mask, integrated gradients' baseline, and faithfulness. Not a method itself (no ``METHOD``).

Shapes: one item of T tokens, K = embedding size, N = number of perturbed copies.
"""
from __future__ import annotations

import torch

from worker.methods.base import Target
from worker.models.base import Adapter, Encoding, InputError

BASELINES = ("mask", "zero")


def candidates(encoding: Encoding) -> torch.Tensor:
    """Indices of item 0's non-special tokens (the ones a method may remove), long, on the CPU."""
    special = torch.tensor(encoding.special[0], dtype=torch.bool)
    return (~special).nonzero().squeeze(1)


def baseline_embedding(adapter: Adapter, encoding: Encoding, kind: str = "mask") -> torch.Tensor:
    """1×T×K reference input: ``"mask"`` = the embeddings of item 0 with every non-special token replaced by the
    adapter's mask token (specials kept), ``"zero"`` = all zeros."""
    one = encoding.item(0)
    if kind == "zero":
        return torch.zeros_like(adapter.embed(one))
    if kind != "mask":
        raise InputError(f"baseline must be one of {BASELINES}")
    drop = torch.zeros_like(one.input_ids, dtype=torch.bool)
    drop[0, candidates(one)] = True
    return adapter.embed(adapter.mask(one, drop))


def batched_scores(
    adapter: Adapter, encoding: Encoding, x: torch.Tensor, target: Target, batch_size: int = 64
) -> torch.Tensor:
    """S(y) (N, float) for N copies x (N×T×K) of item 0 of `encoding`, `batch_size` copies per forward, no gradient."""
    one = encoding.item(0)
    out = []
    with torch.no_grad():
        for chunk in x.split(batch_size):
            n = chunk.shape[0]
            logits = adapter.forward(chunk, one.repeat(n)).logits
            out.append(Target(target.index[:1].expand(n), target.score)(logits))
    return torch.cat(out)


def masked_probabilities(
    adapter: Adapter, encoding: Encoding, drop: torch.Tensor, index: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """p(y | item 0 with the tokens of each row of `drop` (N×T bool) masked at the id level): N values, in one
    forward pass (or `batch_size` rows per pass)."""
    one = encoding.item(0)
    out = []
    with torch.no_grad():
        for rows in drop.split(batch_size or drop.shape[0]):
            masked = adapter.mask(one.repeat(rows.shape[0]), rows)
            out.append(adapter.forward(adapter.embed(masked), masked).head_logits().softmax(-1)[:, int(index[0])])
    return torch.cat(out)
