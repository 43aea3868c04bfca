"""`lrp`: layer-wise relevance propagation, epsilon rule (Bach et al. 2015; Montavon et al. 2019, "Layer-wise
relevance propagation: an overview", §10.2.1 LRP-ε).

**Adapters.** Those that declare ``lrp_rules`` (and a head): each of their layers has a well-defined LRP rule, and
the adapter propagates the relevance itself (``adapter.lrp_relevance``). Today that is the Kim CNN (``cnn`` bundles,
e.g. ``cnn-rt``: embeddings → Conv1d of widths 1/3/5/7 → ReLU → max-pool over the real tokens → Linear; its rules are
in :mod:`worker.models.cnn`). The other adapters are refused at submit time: LSTMs need rules for the
multiplicative gates (Arras et al. 2017 — "LRP for LSTMs"), and Transformers/attention need rules for the softmax
and the layer norms (Chefer et al. 2021); neither is provided here.

**Rules.** Relevance starts on the target logit with the value S(y) (the logit by default; for ``score: probability |
log_probability`` the target logit's unit is given S(y) and the same rules redistribute it) and is propagated down
to the input embeddings x (T×K) with the ε-rule for Linear and Conv1d layers (stab(z) = z + ε·sign(z), sign(0) = +1,
Captum's ``EpsilonRule``), relevance passed unchanged through ReLU, and winner-takes-all through max-pooling.

Token score = the sum of R over the K embedding dimensions (signed: positive = evidence for y). Higher = more
important; raw values kept.

**Conservation.** Every layer passes on Σ R_in = Σ_k R_k · (z_k − b_k) / stab(z_k): with zero biases and ε → 0
the input relevance sums to S(y). With biases, the share of each unit's relevance that its bias contributed to z_k
(b_k / z_k of it) stays with the bias and is not passed down, and ε absorbs a further ε/|z_k| share; ``absorbed``
in the JSON part is S(y) − Σ scores (what the biases and ε took).

JSON: ``{"scores": [T floats], "rule", "epsilon", "start": S(y), "total": Σ scores, "absorbed": start − total}``.
Tensors: ``relevance`` (T×K), ``scores`` (T).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma

from worker.capabilities import Capability
from worker.methods.base import Method, MethodResult, Params, Target, first_item, token_result
from worker.models.base import Adapter, Encoding
from worker.models.protocols import LRPRules, offering

RULES = ("epsilon",)


class LRPParams(Params):
    rule = ma.fields.String(load_default="epsilon", validate=ma.validate.OneOf(RULES),
                            metadata={"description": "propagation rule for the Linear and Conv1d layers"})
    epsilon = ma.fields.Float(load_default=1e-9, allow_nan=False,
                              validate=ma.validate.Range(min=0.0, max=1e3, min_inclusive=False),
                              metadata={"description": "ε of the ε-rule: stab(z) = z + ε·sign(z) (Captum's default "
                                                       "1e-9; larger values absorb more relevance and remove noise)"})


def applies(adapter: Adapter) -> bool:
    """Whether the adapter offers what lrp requires (a head and LRP rules for its layers)."""
    return not METHOD.missing(adapter)


def run_batch(
    adapter: Adapter,
    encoding: Encoding,
    target: Target,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> list[MethodResult]:
    """One forward and one backward pass for the padded batch; padding gets no relevance and does not change the
    real tokens' relevance (the adapter's padding invariance)."""
    rules = offering(adapter, Capability.LRP_RULES, LRPRules, "lrp")
    progress(0.0)
    mask = encoding.attention_mask.to(adapter.device).bool()
    rel, start, _ = rules.lrp_relevance(adapter.embed(encoding), mask, target, float(params["epsilon"]))
    out = []
    for i in range(len(encoding)):
        one, r = encoding.item(i), rel[i, : len(encoding.tokens[i])]
        scores = r.sum(-1)
        total = float(scores.sum())
        out.append(token_result(adapter, one, Target(target.index[i : i + 1], target.score), scores,
                                f"LRP-ε (ε={params['epsilon']:g}, sum over embedding dims)", {"relevance": r},
                                rule=params["rule"], epsilon=float(params["epsilon"]), start=float(start[i]),
                                total=total, absorbed=float(start[i]) - total, output=float(start[i])))
    progress(1.0)
    return out


run = first_item(run_batch)


METHOD = Method(
    name="lrp",
    summary="Layer-wise relevance propagation (ε-rule) from S(y) to the input embeddings, summed per token (signed). "
            "Adapters with LRP rules for their layers (the Kim CNN): LSTMs and Transformers need rules (Arras et al., "
            "Chefer et al.) not provided.",
    params=LRPParams,
    run=run,
    run_batch=run_batch,
    tensors=("relevance", "scores"),
)
