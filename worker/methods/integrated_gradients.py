"""`integrated_gradients`: Sundararajan et al. 2017, on the adapter's input embeddings.

attribution = (x − x') ⊙ ∫₀¹ ∂S(y)/∂x |_{x' + α(x − x')} dα   (T×K), token score = sum over the K dimensions (signed).

- ``baseline`` x': ``"zero"`` (all-zero embeddings) or ``"mask"`` (every non-special token replaced by the model's
  mask token, [MASK] for Hugging Face models; specials kept).
- The integral, by default (``steps`` not given), is adaptive: composite Simpson panels on α (the 3-point
  Gauss–Lobatto rule: a panel's ends and midpoint), starting from [0, ½] and [½, 1]; while the item's completeness
  gap |delta| exceeds ``tolerance``, the panel with the largest gap is bisected (2 new points: its ends and midpoint
  are kept). A panel's gap is exact and free: its ends are nodes, and the forward pass of each node's gradient
  gives S there, so ∫_a^b f = S(path(b)) − S(path(a)) is known without extra passes, and S(x), S(x') for delta come
  from the same passes. The path's integrand is rough where the state changes fast (for MiniLM from a zero
  baseline, α ≈ 0.1-0.5) and smooth elsewhere: points go where the gap is. ``tolerance`` defaults to 1e-3
  (``TOLERANCE``: the mean |delta| stays below Captum's at its defaults, with about half the points). Items of a group
  run their rounds together (one batch of new points per round); f(α) = ∂S/∂x · (x − x') is kept per node as a float,
  so a round's bookkeeping is no tensor work.
- With ``steps``, exactly that many points: ``"gausslegendre"`` (as Captum) or the Riemann sums
  ``"riemann_left" | "riemann_right" | "riemann_middle"`` (``method``); the results equal Captum's
  ``IntegratedGradients`` with the same ``method`` and ``n_steps``.
- ``internal_batch_size`` interpolation points run per forward/backward pass, so memory is bounded by it, not by
  ``steps`` (Captum's knob of the same name). Progress is reported after every batch.

Several items (``run_batch``, used by batch jobs and audits): the items, sorted by length, run in groups of
``internal_batch_size`` that share passes of at most that many rows, padded to the pass's longest item (sorted, the
padding is small: 3% of the rows' tokens on 256 RT sentences; a pass per item per adaptive round of 2 points cost more
than the padding on a CPU; groups of as many items as 16×512 tokens, whose passes are fuller, and passes of 32 rows
were no faster on 64 of them: what a fuller pass saves, its wider padding costs); each item's gradients are kept at
its own length, so the results equal ``run``'s per item up to float rounding.

``delta`` = Σ attribution − (S(x) − S(x')): the completeness gap of the quadrature (small with enough steps).

JSON: ``{"scores": [T floats], "baseline", "steps" (points used), "method" (``"adaptive"`` or the rule), "delta",
"tolerance" (adaptive only)}``. Tensors: ``attribution`` (T×K), ``scores``.
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
FIXED_STEPS = 32  # what callers without the adaptive rule (generation) use when steps is not given
# Simpson's rule (3-point Gauss–Lobatto) on [0, 1]: its nodes are the panel's ends and midpoint, so a bisected panel
# keeps all three and costs 2 new points (5-point Lobatto, degree 7, needed 34 points where this needs 22 for the
# same gaps on 24 RT sentences: the rough stretch of the path wants narrow panels more than a high order)
SIMPSON = ((0.0, 1 / 6), (0.5, 4 / 6), (1.0, 1 / 6))
FIRST_PANELS = ((0.0, 0.5), (0.5, 1.0))
MIN_WIDTH = 2.0 ** -12
# The default tolerance: on 256 RT test sentences with minilm-rt (zero baseline) it gives a mean |delta| of 5.0e-4 at
# 25.1 points per sentence, vs 6.4e-4 for Captum's defaults (Gauss–Legendre, 50 points); 8e-4 (the former default)
# took 26.4 points for 3.9e-4, 1.2e-3 would exceed Captum's mean on the first 32 of them
TOLERANCE = 1e-3


class IntegratedGradientsParams(Params):
    baseline = ma.fields.String(load_default="zero", validate=ma.validate.OneOf(BASELINES),
                                metadata={"description": "reference input: zero embeddings or all tokens masked"})
    steps = ma.fields.Integer(load_default=None, allow_none=True, strict=True,
                              validate=ma.validate.Range(2, MAX_STEPS),
                              metadata={"description": "exactly this many quadrature points along the path (`method`); "
                                                       "default: adaptive to `tolerance`"})
    tolerance = ma.fields.Float(load_default=TOLERANCE, allow_nan=False,
                                validate=ma.validate.Range(1e-7, 1.0),
                                metadata={"description": "adaptive rule (no `steps`): largest completeness gap "
                                                         "|Σ attribution − (S(x) − S(x'))|"})
    method = ma.fields.String(load_default="gausslegendre", validate=ma.validate.OneOf(QUADRATURES),
                              metadata={"description": "quadrature rule with `steps`"})
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

    The B·steps rows (item, α) run item after item, ``internal_batch_size`` per pass, so memory is bounded by it and
    not by ``steps``, and a pass is padded only to its own rows' longest item, not the group's (the items come sorted
    by length; all B items per pass, as before, padded every row to the longest of all)."""
    alphas, weights = quadrature(steps, method)
    alphas, weights = alphas.to(x.dtype).to(x.device), weights.to(x.dtype).to(x.device)
    diff = x - baseline
    total = torch.zeros_like(x)
    rows = [(j, k) for j in range(x.shape[0]) for k in range(steps)]
    passes = math.ceil(len(rows) / internal_batch_size)
    for b in range(passes):
        chunk = rows[b * internal_batch_size : (b + 1) * internal_batch_size]
        items = [j for j, _ in chunk]
        k = torch.tensor([k for _, k in chunk], device=x.device)
        part, points, rows_target = _path_pass(encoding, x, baseline, target, items, alphas[k])
        grad = input_gradient(adapter, points, part, rows_target).detach()
        at = torch.tensor(items, device=x.device)
        total[:, : points.shape[1]].index_add_(0, at, weights[k].view(-1, 1, 1) * grad)
        progress((b + 1) / passes)
    return diff * total


def _path_pass(encoding: Encoding, x: torch.Tensor, baseline: torch.Tensor, target: Target, items: list[int],
               alphas: torch.Tensor) -> tuple[Encoding, torch.Tensor, Target]:
    """One pass of path rows, row r = item items[r] at α = alphas[r]: the rows' encoding (padded to their longest
    item only), the points x' + α(x − x') cut to that width, and the rows' targets."""
    part = encoding.subset(items)
    points = (baseline[items] + alphas.view(-1, 1, 1) * (x - baseline)[items])[:, : part.input_ids.shape[1]]
    index = target.index[torch.tensor(items, device=target.index.device)]
    return part, points, Target(index, target.score)


def _gradients_and_scores(adapter: Adapter, points: torch.Tensor, encoding: Encoding,
                          target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """∂S/∂x and S itself for a batch of points (N×T×K): the forward pass of the gradient gives S for free."""
    points = points.detach().requires_grad_(True)
    with torch.enable_grad():
        score = target(adapter.forward(points, encoding).logits)
        (grad,) = torch.autograd.grad(score.sum(), points)
    return grad, score.detach()


def _nodes(panel: tuple[float, float]) -> list[tuple[float, float]]:
    """(α, weight) of Simpson's rule on the panel [lo, hi]."""
    lo, hi = panel
    return [(lo + (hi - lo) * xi, (hi - lo) * w) for xi, w in SIMPSON]


class _Path:
    """One item's adaptive state: its panels, and at each evaluated node α its gradient (T×K, at the item's own
    length), f(α) = ∂S/∂x · (x − x') and S(α), so that a panel's gap costs three floats and no tensor work."""

    def __init__(self) -> None:
        self.panels = list(FIRST_PANELS)
        self.pending = list(FIRST_PANELS)  # panels whose nodes are not all evaluated yet
        self.grads: dict[float, torch.Tensor] = {}
        self.f: dict[float, float] = {}
        self.s: dict[float, float] = {}

    def missing(self) -> list[float]:
        return list(dict.fromkeys(alpha for panel in self.pending for alpha, _ in _nodes(panel)
                                  if alpha not in self.grads))

    def gap(self, panel: tuple[float, float]) -> float:
        """The panel's completeness gap: its quadrature of f minus the exact S(b) − S(a)."""
        lo, hi = panel
        return sum(w * self.f[alpha] for alpha, w in _nodes(panel)) - (self.s[hi] - self.s[lo])

    def refine(self, tolerance: float) -> bool:
        """Done (True) when |Σ gaps| is within `tolerance` (or the worst panel is ``MIN_WIDTH`` wide, or
        ``MAX_STEPS`` points are used); else the panel with the largest gap is bisected (False)."""
        gaps = [self.gap(panel) for panel in self.panels]
        worst = max(range(len(gaps)), key=lambda p: abs(gaps[p]))
        lo, hi = self.panels[worst]
        if abs(sum(gaps)) <= tolerance or hi - lo <= MIN_WIDTH or len(self.grads) >= MAX_STEPS:
            self.pending = []
            return True
        mid = 0.5 * (lo + hi)
        self.panels[worst : worst + 1] = [(lo, mid), (mid, hi)]
        self.pending = self.panels[worst : worst + 2]
        return False

    def total(self) -> torch.Tensor:
        """Σ over panels of Simpson's weights × gradients (T×K)."""
        return sum(w * self.grads[alpha] for panel in self.panels for alpha, w in _nodes(panel))


def _evaluate(adapter: Adapter, encoding: Encoding, x: torch.Tensor, baseline: torch.Tensor, target: Target,
              paths: list[_Path], rows: int) -> None:
    """Evaluate the nodes that the pending panels of all items lack, ``rows`` per pass. The items are sorted by
    length, so consecutive rows have nearly one width and each pass is padded only to its own rows' longest."""
    need = [(j, alpha) for j, path in enumerate(paths) for alpha in path.missing()]
    diff = x - baseline
    for start in range(0, len(need), rows):
        chunk = need[start : start + rows]
        items = [j for j, _ in chunk]
        at = torch.tensor([alpha for _, alpha in chunk], dtype=x.dtype, device=x.device)
        part, points, rows_target = _path_pass(encoding, x, baseline, target, items, at)
        grad, score = _gradients_and_scores(adapter, points, part, rows_target)
        f = (grad * diff[items, : points.shape[1]]).sum((1, 2))  # diff is 0 at the padding
        for (j, alpha), g, fj, sj in zip(chunk, grad, f.tolist(), score.tolist(), strict=True):
            path = paths[j]
            path.grads[alpha], path.f[alpha], path.s[alpha] = g[: len(encoding.tokens[j])], fj, sj


def adaptive_paths(
    adapter: Adapter, encoding: Encoding, x: torch.Tensor, baseline: torch.Tensor, target: Target, tolerance: float,
    internal_batch_size: int = 16, progress: Callable[[float], None] = lambda fraction: None,
) -> list[_Path]:
    """Each item's finished path: its panels and the gradient, f and S at their nodes."""
    paths = [_Path() for _ in range(x.shape[0])]
    done = 0
    while any(path.pending for path in paths):
        _evaluate(adapter, encoding, x, baseline, target, paths, internal_batch_size)
        done += sum(path.refine(tolerance) for path in paths if path.pending)
        progress(done / len(paths))
    return paths


def adaptive_integrated_gradients(
    adapter: Adapter, encoding: Encoding, x: torch.Tensor, baseline: torch.Tensor, target: Target, tolerance: float,
    internal_batch_size: int = 16, progress: Callable[[float], None] = lambda fraction: None,
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """B×T×K attributions of the B items of `encoding` by adaptive Simpson panels (module docstring); also
    the points used per item and S at both ends (B×2: S(x), S(x')).

    Each round evaluates the nodes that the new panels of all items still lack, ``internal_batch_size`` rows per
    pass; then each unfinished item is either done or bisects its worst panel (``_Path.refine``)."""
    paths = adaptive_paths(adapter, encoding, x, baseline, target, tolerance, internal_batch_size, progress)
    total = torch.zeros_like(x)
    for j, path in enumerate(paths):
        total[j, : len(encoding.tokens[j])] = path.total()
    ends = torch.tensor([[path.s[1.0], path.s[0.0]] for path in paths], dtype=x.dtype)
    return (x - baseline) * total, [len(path.grads) for path in paths], ends


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
    by_length = sorted(range(len(encoding)), key=lambda i: len(encoding.tokens[i]))
    groups = [by_length[k : k + rows] for k in range(0, len(by_length), rows)]
    out: dict[int, MethodResult] = {}
    for n, group in enumerate(groups):

        def step(fraction: float, n: int = n) -> None:
            progress((n + fraction) / len(groups))

        part = encoding.subset(group)
        x = adapter.embed(part)
        baseline = x.clone()  # x at the padding: no path there
        for j in range(len(group)):
            one = part.item(j)
            baseline[j, : len(one.tokens[0])] = baseline_embedding(adapter, one, params["baseline"])[0]
        index = target.index[torch.tensor(group, device=target.index.device)]
        if params["steps"] is None:
            attribution, used, ends = adaptive_integrated_gradients(
                adapter, part, x, baseline, Target(index, target.score), params["tolerance"], rows, step)
        else:
            attribution = integrated_gradients(
                adapter, part, x, baseline, Target(index, target.score), params["steps"], params["method"], rows,
                step)
            used, ends = [params["steps"]] * len(group), None
        for j, i in enumerate(group):
            one = part.item(j)
            T = len(one.tokens[0])
            pair = ends[j] if ends is not None else batched_scores(
                adapter, one, torch.cat([x[j : j + 1, :T], baseline[j : j + 1, :T]]),
                Target(index[j : j + 1], target.score))
            out[i] = _result(adapter, one, attribution[j, :T], pair, used[j], Target(index[j : j + 1], target.score),
                             params)
    return [out[i] for i in range(len(encoding))]


def _result(adapter: Adapter, one: Encoding, attribution: torch.Tensor, ends: torch.Tensor, used: int,
            target: Target, params: dict[str, Any]) -> MethodResult:
    """ends: S(x), S(x'); used: the points the quadrature took."""
    scores = attribution.sum(-1)
    delta = float(attribution.sum() - (ends[0] - ends[1]))
    adaptive = params["steps"] is None
    rule = f"adaptive, {used} points" if adaptive else f"{used} steps"
    extra = {"tolerance": params["tolerance"]} if adaptive else {}
    return token_result(adapter, one, target, scores, f"integrated gradients ({rule}, {params['baseline']} baseline)",
                        {"attribution": attribution}, baseline=params["baseline"], steps=used,
                        method="adaptive" if adaptive else params["method"], delta=delta, **extra)


run = first_item(run_batch)


METHOD = Method(
    name="integrated_gradients",
    summary="Integrated gradients from a zero or mask baseline (Sundararajan et al. 2017), batched along the path.",
    params=IntegratedGradientsParams,
    run=run,
    run_batch=run_batch,
    tensors=("attribution", "scores"),
)
