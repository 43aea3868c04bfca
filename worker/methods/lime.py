"""`lime`: Local Interpretable Model-agnostic Explanations for text (Ribeiro et al. 2016), with id-level masking.

Features are the input's non-special words (``unit="word"``, as LIME's text explainer) or tokens (``unit="token"``).
Sample 0 is the input itself; each other sample removes a number of features drawn uniformly from 1 … d−1 (at least 1
when d = 1), chosen at random, by masking their tokens (``Adapter.mask``). Draws come from a generator seeded with the
job's seed. The target's probability on each sample is regressed on the binary feature vectors z by weighted ridge
regression (α = ``ridge``, with intercept), the weights being LIME's kernel sqrt(exp(−d²/width²)) with d = 100 ×
cosine distance between z and the all-ones vector, width = ``kernel_width`` (LIME's defaults: 25, α = 1).

A feature's coefficient is its score; a word's coefficient is split equally over its tokens, so ``word_scores`` (the sum
over a word's tokens) are the coefficients. Specials score 0. ``samples`` is capped by the schema (and by the service's
configured limit at submit time).

JSON: ``{"scores": [T floats], "unit", "samples", "intercept", "r2": weighted R² of the local model}``.
Tensors: ``scores`` (T), ``coefficients`` (d), ``design`` (samples × d, 1 = kept), ``targets`` (samples),
``weights`` (samples).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.methods.base import Method, MethodResult, SeededParams, Target, token_result
from worker.methods.perturb import masked_probabilities
from worker.models.base import Adapter, Encoding

MAX_SAMPLES = 5000


class LimeParams(SeededParams):
    samples = ma.fields.Integer(load_default=500, strict=True, validate=ma.validate.Range(10, MAX_SAMPLES),
                                metadata={"description": "perturbed samples (the first is the input itself)"})
    unit = ma.fields.String(load_default="word", validate=ma.validate.OneOf(("word", "token")),
                            metadata={"description": "interpretable features: words or subword tokens"})
    kernel_width = ma.fields.Float(load_default=25.0, allow_nan=False, validate=ma.validate.Range(1e-3, 1e6),
                                   metadata={"description": "width of the exponential kernel on 100 × cosine distance"})
    ridge = ma.fields.Float(load_default=1.0, allow_nan=False, validate=ma.validate.Range(0.0, 1e6),
                            metadata={"description": "ridge penalty α of the local linear model"})
    batch_size = ma.fields.Integer(load_default=64, strict=True, validate=ma.validate.Range(1, 512),
                                   metadata={"description": "samples per forward pass"})


def features(encoding: Encoding, unit: str) -> list[list[int]]:
    """Token indices of each interpretable feature of item 0 (non-special words, or single non-special tokens)."""
    special = encoding.special[0]
    if unit == "token":
        return [[t] for t, s in enumerate(special) if not s]
    return [group for group in encoding.words[0] if not all(special[t] for t in group)]


def sample_design(d: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """samples × d, 1 = feature kept: row 0 all ones, row i removes r_i ~ U{1 … max(1, d−1)} random features."""
    design = torch.ones(samples, d)
    removed = torch.randint(1, max(2, d), (samples - 1,), generator=generator)
    for i, r in enumerate(removed.tolist(), start=1):
        design[i, torch.randperm(d, generator=generator)[:r]] = 0.0
    return design


def weighted_ridge(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """argmin_{b, c} Σ w_i (y_i − c − z_i·b)² + α‖b‖² (intercept c not penalised) -> (b, c), in float64."""
    z, y, w = z.double(), y.double(), w.double()
    zm = (w @ z) / w.sum()
    ym = (w @ y) / w.sum()
    zc, yc = z - zm, y - ym
    a = zc.T @ (w[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=torch.float64)
    b = torch.linalg.solve(a, zc.T @ (w * yc))
    return b, float(ym - zm @ b)


def local_model(design: torch.Tensor, targets: torch.Tensor, kernel_width: float, ridge: float
                ) -> tuple[torch.Tensor, float, float, torch.Tensor]:
    """LIME's local linear model of targets (N) on the design (N×d, 1 = kept): (coefficients, intercept, weighted
    R², kernel weights), the weights sqrt(exp(−(100 × cosine distance to all-ones)² / width²))."""
    d = design.shape[1]
    targets = targets.double()
    cosine = 1.0 - design.sum(1) / (design.norm(dim=1).clamp_min(1e-12) * d ** 0.5)
    weights = torch.sqrt(torch.exp(-((100.0 * cosine) ** 2) / kernel_width ** 2)).double()
    coefficients, intercept = weighted_ridge(design, targets, weights, ridge)
    fitted = intercept + design.double() @ coefficients
    mean = (weights @ targets) / weights.sum()
    r2 = 1.0 - float(weights @ (targets - fitted) ** 2) / max(float(weights @ (targets - mean) ** 2), 1e-30)
    return coefficients, intercept, r2, weights


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
    groups = features(one, params["unit"])
    T, d, n = len(one.tokens[0]), len(groups), params["samples"]
    generator = torch.Generator().manual_seed(int(seed))
    design = sample_design(d, n, generator)
    member = torch.zeros(d, T, dtype=torch.bool)  # feature × token
    for f, group in enumerate(groups):
        member[f, group] = True
    drop = ((1.0 - design) @ member.float()) > 0  # samples × T
    targets = masked_probabilities(adapter, one, drop, target.index, params["batch_size"]).double().cpu()
    progress(0.9)
    coefficients, intercept, r2, weights = local_model(design, targets, params["kernel_width"], params["ridge"])
    scores = torch.zeros(T, dtype=torch.float64)
    for f, group in enumerate(groups):
        scores[group] = coefficients[f] / len(group)
    progress(1.0)
    return token_result(adapter, one, target, scores, f"LIME ({n} samples, {params['unit']}s)",
                        {"scores": scores.float(), "coefficients": coefficients.float(), "design": design,
                         "targets": targets.float(), "weights": weights.float()},
                        unit=params["unit"], samples=n, intercept=intercept, r2=r2)


METHOD = Method(
    name="lime",
    summary="LIME for text: a weighted ridge model of p(y) on which words (or tokens) are kept, seeded sampling.",
    params=LimeParams,
    run=run,
    tensors=("scores", "coefficients", "design", "targets", "weights"),
)
