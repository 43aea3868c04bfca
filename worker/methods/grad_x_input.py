"""`grad_x_input`: gradient × input (Shrikumar et al. 2016; Captum's ``InputXGradient``).

attribution = x ⊙ ∂S(y)/∂x (T×K) on the adapter's input embeddings x; token score = the sum over the K embedding
dimensions (signed: positive = pushes S(y) up). Higher = more important for the target; raw signed values kept.

JSON: ``{"scores": [T floats]}``. Tensors: ``attribution`` (T×K), ``scores`` (T).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.methods.base import Method, MethodResult, Params, Target, token_result
from worker.methods.gradient import gradient_at_input
from worker.models.base import Adapter, Encoding


class GradXInputParams(Params):
    """No parameters."""


def run(
    adapter: Adapter,
    encoding: Encoding,
    target: Target,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> MethodResult:
    progress(0.0)
    one = encoding.item(0)
    x, grad = gradient_at_input(adapter, one, target)
    attribution = (x * grad)[0].detach()
    scores = attribution.sum(-1)
    progress(1.0)
    return token_result(adapter, one, target, scores, "gradient × input (sum over embedding dims)",
                        {"attribution": attribution})


METHOD = Method(
    name="grad_x_input",
    summary="Gradient × input: x ⊙ ∂S(y)/∂x summed over embedding dimensions per token (signed).",
    params=GradXInputParams,
    run=run,
    tensors=("attribution", "scores"),
    gradient_at_input=True,
)
