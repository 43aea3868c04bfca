"""`lrp`: layer-wise relevance propagation from S(y) down to the input embeddings, summed per token (signed).

**Adapters.** Those that declare ``lrp_rules`` (and a head) propagate relevance themselves
(``adapter.lrp_relevance``), each with the rules of its architecture:

- the Kim CNN (``cnn-rt``): ε-rule on the convolutions and the output, winner-takes-all through the max-pool
  (:mod:`worker.models.cnn`);
- the BiLSTM (``bilstm-rt``), ESIM (``esim-50``, ``esim-300``) and the LSTM language model (``lstm-lm-rt``): the
  LSTM rules of Arras et al. 2017 (signal-takes-all at the gates, ε on the linear maps and the cell sum, identity
  through tanh), with AttnLRP's rules on ESIM's alignment and the LM's attention over its history;
- Transformers (``transformer-rt``, the BERT family: ``minilm-rt`` and ``*ForSequenceClassification`` BERT
  directories): AttnLRP (Achtibat et al. 2024): ε on linear layers, identity through the activations and the
  LayerNorms' divisor, the uniform rule on QKᵀ and A·V, the softmax rule.

The LSTM/Transformer rules run as one modified backward pass (:mod:`worker.models.relevance`), the cost of about one
forward and one backward pass. A model without a head (no S(y)) or without rules (the reverse seq2seq) is refused at
submit time.

**Rules.** Relevance starts on the target logit with the value S(y) (the logit by default; for ``score: probability |
log_probability`` the target logit's unit is given S(y) and the same rules redistribute it) and is propagated down
to the input embeddings x (T×K), with the ε-rule (stab(z) = z + ε·sign(z), sign(0) = +1, Captum's
``EpsilonRule``) on linear layers.

Token score = the sum of R over the K embedding dimensions (signed: positive = evidence for y). Higher = more
important; raw values kept.

**Conservation.** With zero biases and ε → 0 the CNN's and the LSTMs' input relevance sums to S(y). Biases,
positional and token-type embeddings, ε and AttnLRP's softmax rule each keep a share; ``absorbed`` = S(y) − Σ scores
reports what they took.

JSON: ``{"scores": [T floats], "rule", "epsilon", "output": S(y), "start": S(y) (the older name), "total": Σ scores,
"absorbed": output − total}``. Tensors: ``relevance`` (T×K), ``scores`` (T).
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
    """One (rule-modified) forward and one backward pass for the padded batch; padding gets no relevance and does not
    change the real tokens' relevance (the adapter's padding invariance)."""
    rules = offering(adapter, Capability.LRP_RULES, LRPRules, "lrp")
    progress(0.0)
    mask = encoding.attention_mask.to(adapter.device).bool()
    rel, start, _ = rules.lrp_relevance(adapter.embed(encoding), mask, target, float(params["epsilon"]), encoding)
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
    summary="Layer-wise relevance propagation from S(y) to the input embeddings, summed per token (signed): ε-rule "
            "for the CNN, the LSTM rules of Arras et al. 2017 (BiLSTM, ESIM), AttnLRP for Transformers (Achtibat "
            "et al. 2024). One modified backward pass; `absorbed` reports what biases, ε and softmax rules kept.",
    params=LRPParams,
    run=run,
    run_batch=run_batch,
    tensors=("relevance", "scores"),
)
