"""`attention_rollout`: how much each input token flows into the top layer through the self-attention of every layer
(Abnar & Zuidema 2020, "Quantifying attention flow in transformers").

R = Â_L ⋯ Â_1 with Â_l = residual·I + (1 − residual)·(head average of layer l's attention), rows renormalised
(:func:`worker.methods.attention_maps.rollout`). Token score = the mean over the real query positions of R's column
for that token (``query="mean"``, matching a mean-pooled head) or the first position's row (``query="first"``, for
[CLS]-pooled heads). Scores are ≥ 0 and sum to 1; no target is needed, so headless models run it too (their results
carry no faithfulness). Requires ``self_attention`` (Hugging Face encoders, the Transformer classifier).

JSON: ``{"scores": [T floats], "query", "residual"}``. Tensors: ``rollout`` (T×T), ``scores`` (T).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma

from worker.methods.attention_maps import rollout, self_attention
from worker.methods.base import Method, MethodResult, Params, Target, token_figure
from worker.models.base import Adapter, Encoding


class RolloutParams(Params):
    query = ma.fields.String(load_default="mean", validate=ma.validate.OneOf(("mean", "first")),
                             metadata={"description": "read the flow at the mean of all positions or at the first"})
    residual = ma.fields.Float(load_default=0.5, allow_nan=False, validate=ma.validate.Range(0.0, 1.0),
                               metadata={"description": "weight of the identity (residual connection) per layer"})


def run(
    adapter: Adapter,
    encoding: Encoding,
    target: Target | None,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> MethodResult:
    progress(0.0)
    one = encoding.item(0)
    flow = rollout(self_attention(adapter, one), params["residual"])
    scores = flow[0] if params["query"] == "first" else flow.mean(0)
    values = scores.tolist()
    return MethodResult(
        tensors={"rollout": flow.float().contiguous(), "scores": scores.float().contiguous()},
        json={"scores": values, "query": params["query"], "residual": params["residual"]},
        figures={"": lambda: token_figure(adapter, one, values, f"attention rollout (query: {params['query']})", target)},
    )


METHOD = Method(
    name="attention_rollout",
    summary="Attention rollout (Abnar & Zuidema 2020): head-averaged attention plus identity, multiplied across "
            "layers; per-token flow into the top layer.",
    params=RolloutParams,
    run=run,
    tensors=("rollout", "scores"),
)
