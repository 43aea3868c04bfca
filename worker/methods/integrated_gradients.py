"""`integrated_gradients`: Sundararajan et al. 2017, on the adapter's input embeddings.

attribution = (x − x') ⊙ ∫₀¹ ∂S(y)/∂x |_{x' + α(x − x')} dα   (T×K), token score = sum over the K dimensions (signed).

- ``baseline`` x': ``"zero"`` (all-zero embeddings) or ``"mask"`` (every non-special token replaced by the model's
  mask token, [MASK] for Hugging Face models; specials kept).
- The integral is a quadrature over ``steps`` points: ``"gausslegendre"`` (default, as Captum) or the Riemann sums
  ``"riemann_left" | "riemann_right" | "riemann_middle"``; the results equal Captum's ``IntegratedGradients`` with the
  same ``method`` and ``n_steps``.
- ``internal_batch_size`` interpolation points run per forward/backward pass, so memory is bounded by it, not by
  ``steps`` (Captum's knob of the same name). Progress is reported after every batch.

Several items (``run_batch``, used by audits): items with the same number of tokens share passes, at most
``internal_batch_size`` rows each, so no row is padding (a padded row costs as much as a real one, and padding makes
attention carry a mask); the results equal ``run``'s per item.

``delta`` = Σ attribution − (S(x) − S(x')): the completeness gap of the quadrature (small with enough steps).

JSON: ``{"scores": [T floats], "baseline", "steps", "method", "delta"}``. Tensors: ``attribution`` (T×K), ``scores``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import marshmallow as ma
import numpy as np
import torch

from worker.methods.base import Method, MethodResult, Params, Target, first_item, token_result
from worker.methods.gradient import input_gradient
from worker.methods.perturb import BASELINES, baseline_embedding, batched_scores
from worker.models.base import Adapter, Encoding

QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle")
MAX_STEPS = 1024


class IntegratedGradientsParams(Params):
    baseline = ma.fields.String(load_default="zero", validate=ma.validate.OneOf(BASELINES),
                                metadata={"description": "reference input: zero embeddings or all tokens masked"})
    steps = ma.fields.Integer(load_default=32, strict=True, validate=ma.validate.Range(2, MAX_STEPS),
                              metadata={"description": "quadrature points along the path"})
    method = ma.fields.String(load_default="gausslegendre", validate=ma.validate.OneOf(QUADRATURES),
                              metadata={"description": "quadrature rule"})
    internal_batch_size = ma.fields.Integer(load_default=16, strict=True, validate=ma.validate.Range(1, 256),
                                            metadata={"description": "path points per forward/backward pass"})


def quadrature(steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Points α in [0, 1] and weights w (each `steps`, float64) with Σ w f(α) ≈ ∫₀¹ f."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [−1, 1]
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    start = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    alphas = (torch.arange(steps, dtype=torch.float64) + start) / steps
    return alphas, torch.full((steps,), 1.0 / steps, dtype=torch.float64)


def integrated_gradients(
    adapter: Adapter, encoding: Encoding, x: torch.Tensor, baseline: torch.Tensor, target: Target, steps: int,
    method: str = "gausslegendre", internal_batch_size: int = 16,
    progress: Callable[[float], None] = lambda fraction: None,
) -> torch.Tensor:
    """B×T×K attributions of the B items of `encoding` (x, baseline: B×T×K; target: B classes).

    Each pass runs ``internal_batch_size`` path points (rows), i.e. max(1, internal_batch_size // B) values of α for
    all B items at once, so memory is bounded by it and not by ``steps``."""
    alphas, weights = quadrature(steps, method)
    alphas, weights = alphas.to(x.dtype).to(x.device), weights.to(x.dtype).to(x.device)
    B = x.shape[0]
    diff = x - baseline
    total = torch.zeros_like(x)
    per_pass = max(1, internal_batch_size // B)
    batches = math.ceil(steps / per_pass)
    for b in range(batches):
        part = slice(b * per_pass, (b + 1) * per_pass)
        a, w = alphas[part], weights[part]
        n = a.shape[0]
        points = (baseline.unsqueeze(0) + a.view(-1, 1, 1, 1) * diff.unsqueeze(0)).flatten(0, 1)  # (n·B)×T×K
        grad = input_gradient(adapter, points, encoding.repeat(n), Target(target.index.repeat(n), target.score))
        total += (w.view(-1, 1, 1, 1) * grad.detach().view(n, *x.shape)).sum(0)
        progress((b + 1) / batches)
    return diff * total


def run_batch(
    adapter: Adapter,
    encoding: Encoding,
    target: Target,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> list[MethodResult]:
    progress(0.0)
    rows = params["internal_batch_size"]
    by_length: dict[int, list[int]] = {}
    for i, tokens in enumerate(encoding.tokens):
        by_length.setdefault(len(tokens), []).append(i)
    groups = [g[k : k + rows] for g in by_length.values() for k in range(0, len(g), rows)]
    out: dict[int, MethodResult] = {}
    for n, group in enumerate(groups):

        def step(fraction: float, n: int = n) -> None:
            progress((n + fraction) / len(groups))

        part = encoding.subset(group)
        x = adapter.embed(part)
        baseline = torch.cat([baseline_embedding(adapter, part.item(j), params["baseline"]) for j in range(len(group))])
        index = target.index[torch.tensor(group, device=target.index.device)]
        attribution = integrated_gradients(
            adapter, part, x, baseline, Target(index, target.score), params["steps"], params["method"], rows,
            step)
        for j, i in enumerate(group):
            out[i] = _result(adapter, part.item(j), x[j : j + 1], baseline[j : j + 1], attribution[j],
                             Target(index[j : j + 1], target.score), params)
    return [out[i] for i in range(len(encoding))]


def _result(adapter: Adapter, one: Encoding, x: torch.Tensor, baseline: torch.Tensor, attribution: torch.Tensor,
            target: Target, params: dict[str, Any]) -> MethodResult:
    scores = attribution.sum(-1)
    ends = batched_scores(adapter, one, torch.cat([x, baseline]), target)
    delta = float(attribution.sum() - (ends[0] - ends[1]))
    title = f"integrated gradients ({params['steps']} steps, {params['baseline']} baseline)"
    return token_result(adapter, one, target, scores, title, {"attribution": attribution},
                        baseline=params["baseline"], steps=params["steps"], method=params["method"], delta=delta)


run = first_item(run_batch)


METHOD = Method(
    name="integrated_gradients",
    summary="Integrated gradients from a zero or mask baseline (Sundararajan et al. 2017), batched along the path.",
    params=IntegratedGradientsParams,
    run=run,
    run_batch=run_batch,
    tensors=("attribution", "scores"),
)
