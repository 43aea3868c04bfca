"""`grad_x_input`: gradient × input (Shrikumar et al. 2016; Captum's ``InputXGradient``).

attribution = x ⊙ ∂S(y)/∂x (T×K) on the adapter's input embeddings x; token score = the sum over the K embedding
dimensions (signed: positive = pushes S(y) up). Higher = more important for the target; raw signed values kept.

JSON: ``{"scores": [T floats]}``. Tensors: ``attribution`` (T×K), ``scores`` (T).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.methods.base import Method, MethodResult, Params, Target, first_item, token_result
from worker.methods.gradient import gradient_at_input
from worker.models.base import Adapter, Encoding


class GradXInputParams(Params):
    """No parameters."""


def run_batch(
    adapter: Adapter,
    encoding: Encoding,
    target: Target,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> list[MethodResult]:
    """One gradient for the whole padded batch (items are independent; padding is masked)."""
    progress(0.0)
    x, grad = gradient_at_input(adapter, encoding, target)
    attributions = (x * grad).detach()
    out = []
    for i in range(len(encoding)):
        attribution = attributions[i, : len(encoding.tokens[i])]
        out.append(token_result(adapter, encoding.item(i), Target(target.index[i : i + 1], target.score),
                                attribution.sum(-1), "gradient × input (sum over embedding dims)",
                                {"attribution": attribution}))
    progress(1.0)
    return out


run = first_item(run_batch)


METHOD = Method(
    name="grad_x_input",
    summary="Gradient × input: x ⊙ ∂S(y)/∂x summed over embedding dimensions per token (signed).",
    params=GradXInputParams,
    run=run,
    run_batch=run_batch,
    tensors=("attribution", "scores"),
    gradient_at_input=True,
)
