"""`lrp`: layer-wise relevance propagation, epsilon rule (Bach et al. 2015; Montavon et al. 2019, "Layer-wise
relevance propagation: an overview", §10.2.1 LRP-ε).

**Adapters.** The Kim CNN only (``cnn`` bundles, e.g. ``cnn-rt``: embeddings → Conv1d of widths 1/3/5/7 → ReLU →
max-pool over the real tokens → Linear). Each of its layers has a well-defined LRP rule. The other adapters are
refused at submit time (``applies``): LSTMs need rules for the multiplicative gates (Arras et al. 2017 —
"LRP for LSTMs"), and Transformers/attention need rules for the softmax and the layer norms (Chefer et al. 2021);
neither is provided here.

**Rules.** Relevance starts on the target logit with the value S(y) (DESIGN §5: the logit by default; for
``score: probability | log_probability`` the target logit's unit is given S(y) and the same rules redistribute it)
and is propagated down to the input embeddings x (T×K):

- Linear and Conv1d (ε-rule): R_j = a_j Σ_k w_jk R_k / stab(z_k), with z_k = Σ_j a_j w_jk + b_k (bias included)
  and stab(z) = z + ε·sign(z), sign(0) = +1 (Captum's ``EpsilonRule``). The conv's gradient gives Σ_k w_jk s_k
  (the "modified gradient" trick: one backward pass for the four widths and the whole batch).
- ReLU: relevance passes unchanged (R of a unit is R of its pre-activation).
- Max-pool over the real tokens: winner takes all, as an ε-rule layer whose only input is the winner:
  R_win = a_win · R_p / stab(p) (= R_p up to ε; a tie is won by the first position). Padding gets nothing.

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
import torch

from worker.methods.base import Method, MethodResult, Params, Target, first_item, token_result
from worker.models.base import Adapter, Encoding
from worker.models.cnn import CNNAdapter, KimCNN

RULES = ("epsilon",)


class LRPParams(Params):
    rule = ma.fields.String(load_default="epsilon", validate=ma.validate.OneOf(RULES),
                            metadata={"description": "propagation rule for the Linear and Conv1d layers"})
    epsilon = ma.fields.Float(load_default=1e-9, allow_nan=False,
                              validate=ma.validate.Range(min=0.0, max=1e3, min_inclusive=False),
                              metadata={"description": "ε of the ε-rule: stab(z) = z + ε·sign(z) (Captum's default "
                                                       "1e-9; larger values absorb more relevance and remove noise)"})


def applies(adapter: Any) -> bool:
    """LRP rules are defined for the Kim CNN's conv → ReLU → max-pool → linear chain only (module docstring)."""
    return isinstance(adapter, CNNAdapter) and bool(adapter.labels)


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z + ε·sign(z) with sign(0) = +1 (Captum's stabiliser)."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def relevance(module: KimCNN, x: torch.Tensor, mask: torch.Tensor, target: Target,
              epsilon: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ε-LRP through a Kim CNN (eval mode: dropout is the identity).

    x B×T×K input embeddings, mask B×T bool (real tokens) -> (R B×T×K, zero at padding; S(y) B, the relevance put on
    the target logit; logits B×C of the same pass).
    """
    real = mask.unsqueeze(1)  # B×1×T
    cols = (x.detach() * mask.unsqueeze(-1).to(x.dtype)).transpose(1, 2).requires_grad_(True)  # B×K×T
    with torch.enable_grad():
        zs = [conv(cols) for conv in module.conv.values()]  # B×C×T pre-activations, bias included
    pooled, winners = [], []
    for z in zs:
        a = torch.relu(z.detach()).masked_fill(~real, float("-inf"))
        p, win = a.max(-1)  # B×C: max over the real positions and its (first) position
        pooled.append(p)
        winners.append(win)
    p = torch.cat(pooled, -1)  # B×4C
    logits = module.output(p)
    start = target(logits)  # S(y), B
    index = target.index.to(logits.device).view(-1, 1)
    # Linear: R_p = p ⊙ Wᵀ s, with s = S(y) / stab(z_y) on the target logit and 0 elsewhere
    s = torch.zeros_like(logits).scatter_(1, index, (start / stabilize(logits.gather(1, index).squeeze(1),
                                                                         epsilon)).unsqueeze(1))
    r_pool = p * (s @ module.output.weight)
    # max-pool: R_win = a_win · R_p / stab(p) with a_win = p
    r_win = p * r_pool / stabilize(p, epsilon)
    # ReLU passes R; Conv1d: R_x = x ⊙ convᵀ(R_z / stab(z)) — one backward pass for all widths
    total, offset = torch.zeros((), dtype=x.dtype, device=x.device), 0
    for z, win in zip(zs, winners, strict=True):
        channels = z.shape[1]
        r = r_win[:, offset:offset + channels]
        offset += channels
        z_win = z.detach().gather(2, win.unsqueeze(-1)).squeeze(-1)
        scale = torch.zeros_like(z, requires_grad=False).scatter_(2, win.unsqueeze(-1),
                                                                  (r / stabilize(z_win, epsilon)).unsqueeze(-1))
        total = total + (z * scale).sum()
    (grad,) = torch.autograd.grad(total, cols)
    return (cols.detach() * grad).transpose(1, 2), start.detach(), logits.detach()


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
    if not applies(adapter):
        from worker.models.base import InputError

        raise InputError(f"method 'lrp' does not apply to {adapter.name}: LRP rules are provided for the CNN only")
    progress(0.0)
    mask = encoding.attention_mask.to(adapter.device).bool()
    rel, start, _ = relevance(adapter.module, adapter.embed(encoding), mask, target, float(params["epsilon"]))
    out = []
    for i in range(len(encoding)):
        one, r = encoding.item(i), rel[i, : len(encoding.tokens[i])]
        scores = r.sum(-1)
        total = float(scores.sum())
        out.append(token_result(adapter, one, Target(target.index[i : i + 1], target.score), scores,
                                f"LRP-ε (ε={params['epsilon']:g}, sum over embedding dims)", {"relevance": r},
                                rule=params["rule"], epsilon=float(params["epsilon"]), start=float(start[i]),
                                total=total, absorbed=float(start[i]) - total))
    progress(1.0)
    return out


run = first_item(run_batch)


METHOD = Method(
    name="lrp",
    summary="Layer-wise relevance propagation (ε-rule) from S(y) to the input embeddings, summed per token (signed). "
            "CNN (Kim) adapters only: LSTMs and Transformers need rules (Arras et al., Chefer et al.) not provided.",
    params=LRPParams,
    run=run,
    run_batch=run_batch,
    needs_head=True,
    tensors=("relevance", "scores"),
    applies=applies,
)
