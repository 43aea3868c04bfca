"""`smoothgrad`: gradient saliency averaged over noisy copies of the input (Smilkov et al., 2017, "SmoothGrad").

x_i = x + ε_i, ε_i ~ N(0, σ²) on every coordinate of every token (specials included), σ = noise · (max(x) − min(x))
over the item's embeddings (the paper's noise level σ / (x_max − x_min)). Each copy's gradient ∂S(y)/∂x_i is
reduced per token as in `gradient` (``aggregate``); the token score is the mean over the ``samples`` copies of those
reductions (for ``mean_abs`` this equals Captum's ``NoiseTunnel(Saliency(abs=True), nt_type="smoothgrad")`` then the
mean over embedding dims). With ``noise=0`` every copy is x, so the scores equal `gradient`'s.

The noise comes from a ``torch.Generator`` seeded with the job's seed, drawn on the CPU and then moved to the
adapter's device, so a seeded run gives the same noise on any device. Copies run ``batch_size`` at a time; the
progress callback is called after every batch (it raises to cancel; that propagates).

JSON: ``{"scores": [T floats], "aggregate", "samples", "noise", "sigma": σ}``.
Tensors: ``gradient`` (T×K, the mean signed gradient over the copies), ``scores`` (T).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.methods.base import Method, MethodResult, SeededParams, Target, token_result
from worker.methods.gradient import AGGREGATES, aggregate, input_gradient
from worker.models.base import Adapter, Encoding

MAX_SAMPLES = 10_000
MAX_BATCH = 256


class SmoothGradParams(SeededParams):
    samples = ma.fields.Integer(load_default=25, strict=True, validate=ma.validate.Range(1, MAX_SAMPLES),
                                metadata={"description": "number of noisy copies n"})
    noise = ma.fields.Float(load_default=0.1, allow_nan=False, validate=ma.validate.Range(0.0, 1.0),
                            metadata={"description": "noise std as a fraction of max(x) − min(x)"})
    batch_size = ma.fields.Integer(load_default=16, strict=True, validate=ma.validate.Range(1, MAX_BATCH),
                                   metadata={"description": "noisy copies per forward/backward pass"})
    aggregate = ma.fields.String(load_default="mean_abs", validate=ma.validate.OneOf(AGGREGATES),
                                 metadata={"description": "per-token reduction of each copy's gradient"})


def run(
    adapter: Adapter,
    encoding: Encoding,
    target: Target,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> MethodResult:
    one = encoding.item(0)
    x = adapter.embed(one)  # 1×T×K
    samples, batch_size = params["samples"], params["batch_size"]
    sigma = float(params["noise"]) * float(x.max() - x.min())
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    grad_sum = torch.zeros_like(x[0])
    score_sum = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    batches = math.ceil(samples / batch_size)
    progress(0.0)
    for b in range(batches):
        n = min(batch_size, samples - b * batch_size)
        noise = torch.randn((n, *x.shape[1:]), generator=generator, dtype=x.dtype).to(x.device)
        noisy = x.expand(n, -1, -1) + sigma * noise
        sub_target = Target(target.index[:1].expand(n), target.score)
        grad = input_gradient(adapter, noisy, one.repeat(n), sub_target).detach()
        grad_sum += grad.sum(0)
        score_sum += aggregate(grad, params["aggregate"]).sum(0)
        progress((b + 1) / batches)
    grad_mean = grad_sum / samples
    scores = score_sum / samples
    return token_result(adapter, one, target, scores, f"SmoothGrad ({samples} samples, noise {params['noise']:g})",
                        {"gradient": grad_mean}, aggregate=params["aggregate"], samples=samples,
                        noise=params["noise"], sigma=sigma)


METHOD = Method(
    name="smoothgrad",
    summary="SmoothGrad: gradient saliency averaged over noisy copies of the embeddings (Smilkov et al. 2017).",
    params=SmoothGradParams,
    run=run,
    tensors=("gradient", "scores"),
)
