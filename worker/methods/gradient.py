"""`gradient`: vanilla gradient saliency (Li et al., 2016, "Visualizing and understanding neural models in NLP").

For each token t, score_t = mean over the K embedding dimensions of |∂S(y)/∂x_t| (``aggregate="mean_abs"``), or the
L2 norm of ∂S(y)/∂x_t (``aggregate="l2"``), where x is the adapter's input embedding (B×T×K) and S(y) the target score
(docs/extending.md: the target class's logit by default). Higher = more important. Specials are scored too.

JSON: ``{"scores": [T floats], "aggregate": str}`` (``word_scores`` are added by ``explain``).
Tensors: ``gradient`` (T×K, the raw signed gradient ∂S/∂x), ``scores`` (T).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.methods.base import Method, MethodResult, Params, Target, first_item, token_result
from worker.models.base import Adapter, Encoding

AGGREGATES = ("mean_abs", "l2")


class GradientParams(Params):
    aggregate = ma.fields.String(load_default="mean_abs", validate=ma.validate.OneOf(AGGREGATES),
                                 metadata={"description": "per-token reduction of the gradient over embedding dims"})


def input_gradient(adapter: Adapter, x: torch.Tensor, encoding: Encoding, target: Target) -> torch.Tensor:
    """∂S(y)/∂x for a batch: x B×T×K -> B×T×K. Items are independent, so the gradient of the sum is per item."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = adapter.forward(x, encoding).logits
        (grad,) = torch.autograd.grad(target(logits).sum(), x)
    return grad


def gradient_at_input(adapter: Adapter, encoding: Encoding, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """The input embeddings x of `encoding` and ∂S(y)/∂x at x: `explain`'s when it computed them for this input and
    target from its prediction pass (Target.known), else from a forward and backward of its own. Equal either
    way: the same operations on the same x."""
    known = target.known
    if known is not None and known.serves(encoding, target):
        return known.x, known.gradient
    x = adapter.embed(encoding)
    return x, input_gradient(adapter, x, encoding, target)


def aggregate(grad: torch.Tensor, how: str = "mean_abs") -> torch.Tensor:
    """…×T×K gradient -> …×T token scores."""
    if how == "l2":
        return grad.norm(dim=-1)
    return grad.abs().mean(dim=-1)


def run_batch(
    adapter: Adapter,
    encoding: Encoding,
    target: Target,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> list[MethodResult]:
    """One forward + backward pass for the whole padded batch; items are independent, so each item's gradient is
    its own (padding is masked)."""
    progress(0.0)
    _, grads = gradient_at_input(adapter, encoding, target)
    out = []
    for i in range(len(encoding)):
        one, grad = encoding.item(i), grads[i, : len(encoding.tokens[i])]
        scores = aggregate(grad, params["aggregate"])
        out.append(token_result(adapter, one, Target(target.index[i : i + 1], target.score), scores,
                                "gradient saliency |∂S/∂x|", {"gradient": grad}, aggregate=params["aggregate"]))
    progress(1.0)
    return out


run = first_item(run_batch)


METHOD = Method(
    name="gradient",
    summary="Vanilla gradient saliency: mean |∂S(y)/∂x| over embedding dimensions per token (Li et al. 2016).",
    params=GradientParams,
    run=run,
    run_batch=run_batch,
    tensors=("gradient", "scores"),
    gradient_at_input=True,
)
