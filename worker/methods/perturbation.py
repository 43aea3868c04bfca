"""`perturbation`: the meaningful-perturbation mask of Fong & Vedaldi (2017), migrated to text as in Guan et al. 2019
§4 (the sentence treated as a 1-D image whose "pixels" are tokens).

A mask m ∈ [0, 1]^T blends each token's embedding with a baseline (``"mask"``: the mask token's embedding;
``"zero"``): x̃ = m ⊙ x + (1 − m) ⊙ x'. The deletion game learns the smallest, smoothest deletion that destroys the
target's score S(y) (the job's ``score``; the logit by default, because a saturated probability has no gradient):

    min_m  S(x̃) / |S(x)| + area · mean_t (1 − m_t) + tv · mean_t |m_{t+1} − m_t|^β

over the non-special tokens (specials stay at m = 1), with Adam (``lr``) for ``steps`` steps from m = 0.5 (from m = 1
the gradient is often too flat to leave it), m clipped to [0, 1] after each step (as the authors do). Deterministic (no sampling), so it needs no seed. Token score =
1 − m (higher = deleting it matters more); the raw mask is kept. Specials score 0.

JSON: ``{"scores": [T floats], "mask": [T floats], "score": S(x̃) at the end, "objective"}``.
Tensors: ``mask`` (T), ``scores`` (T).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.methods.base import Method, MethodResult, Params, Target, token_result
from worker.methods.perturb import BASELINES, baseline_embedding, candidates
from worker.models.base import Adapter, Encoding


class PerturbationParams(Params):
    steps = ma.fields.Integer(load_default=100, strict=True, validate=ma.validate.Range(1, 2000),
                              metadata={"description": "optimisation steps"})
    lr = ma.fields.Float(load_default=0.1, allow_nan=False, validate=ma.validate.Range(1e-5, 10.0),
                         metadata={"description": "Adam learning rate"})
    area = ma.fields.Float(load_default=0.02, allow_nan=False, validate=ma.validate.Range(0.0, 100.0),
                           metadata={"description": "weight of the deleted fraction mean(1 − m)"})
    tv = ma.fields.Float(load_default=0.05, allow_nan=False, validate=ma.validate.Range(0.0, 100.0),
                         metadata={"description": "weight of the total variation of m along the tokens"})
    beta = ma.fields.Float(load_default=3.0, allow_nan=False, validate=ma.validate.Range(1.0, 10.0),
                           metadata={"description": "exponent of the total variation"})
    baseline = ma.fields.String(load_default="mask", validate=ma.validate.OneOf(BASELINES),
                                metadata={"description": "what a deleted token's embedding is blended towards"})


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
    x = adapter.embed(one)
    baseline = baseline_embedding(adapter, one, params["baseline"])
    cand = candidates(one).to(x.device)
    free = torch.full((len(cand),), 0.5, dtype=x.dtype, device=x.device, requires_grad=True)
    optimiser = torch.optim.Adam([free], lr=params["lr"])
    one_target = Target(target.index[:1], target.score)
    with torch.no_grad():
        scale = float(one_target(adapter.forward(x, one).logits)[0].abs().clamp_min(1e-6))

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.ones(x.shape[1], dtype=x.dtype, device=x.device).index_put((cand,), free)
        blended = m.view(1, -1, 1) * x + (1 - m.view(1, -1, 1)) * baseline
        score = one_target(adapter.forward(blended, one).logits)[0]
        tv = (free[1:] - free[:-1]).abs().pow(params["beta"]).mean() if len(cand) > 1 else free.sum() * 0
        return score / scale + params["area"] * (1 - free).mean() + params["tv"] * tv, score

    every = max(1, params["steps"] // 10)
    with torch.enable_grad():
        for step in range(params["steps"]):
            loss, _ = objective()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                free.clamp_(0.0, 1.0)
            if (step + 1) % every == 0:
                progress((step + 1) / params["steps"])
    with torch.no_grad():
        loss, p = objective()
    mask = torch.ones(x.shape[1], dtype=x.dtype).index_put((cand.cpu(),), free.detach().cpu())
    scores = 1.0 - mask
    return token_result(adapter, one, target, scores, "meaningful perturbation (1 − mask)", {"mask": mask},
                        mask=mask.tolist(), score=float(p), objective=float(loss))


METHOD = Method(
    name="perturbation",
    summary="Fong & Vedaldi's deletion mask migrated to text (Guan et al. §4): 1 − m of the smallest smooth deletion.",
    params=PerturbationParams,
    run=run,
    tensors=("mask", "scores"),
)
