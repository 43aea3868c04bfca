"""The sigma engine (Guan et al., ICML 2019, §3.2): fit σ per token for many hidden states at once.

Objective, per state s = Φ(x) of one sentence (Eq. 7 in the form of the authors' code, up to constants and scale)::

    L(σ) = mean over the elements e of s of  E_ε (Φ(x + ε)_e − s_e)² / σ_S,e²   −   λ · mean over tokens i of log(σ_i / bound)
    ε_i ~ N(0, σ_i² I_K) on token i's embedding,  σ_i = bound · sigmoid(r_i)

σ_S² is the normalisation: per-element variance of the layer over reference inputs (``std``, from the model's
statistics) or, as fallback, the mean of s² over the sentence's elements (``mean_square``: mean((s̃−s)²)/mean(s²)).

A *view* is one state s to explain: a layer (``"layer.3"``: all real positions × hidden units, Guan §5.2), a ``B×H``
layer (``pool``, ``output``), or one time step of a ``B×T×H`` layer (``View("decoder", step=t)``: timestamp mode,
Guan Fig. 2). :func:`fit` minimises L for every (restart, view, sentence) of a batch at once: each step draws
``samples`` noise copies per group and runs the ``samples × restarts × views × sentences`` sequences in one forward
pass per layer, each only as deep as its layer (a view all of whose groups have stopped is no longer run); s is
computed once. Groups stop on their own, so a batch stops when its slowest group has converged or at ``max_steps``.

Optimisers (``optimizer``): ``newton`` (default) — per-token fixed-point steps on log σ (:func:`_newton`), which reach
the authors' objective or lower in 20-40 steps of 4 draws; ``adam`` — Adam on r with ``lr``, the step size halved on
each plateau of the loss and a group done after ``decays`` halvings (the default before issue 20: 150-600 steps).

Starts (``init``): ``linear`` — the closed form of the small-noise expansion E‖Φ(x+ε)−s‖²_W ≈ Σ_i σ_i² ‖W^½ J_i‖²_F,
with ‖W^½ J_i‖²_F estimated by Hutchinson probes (vector–Jacobian products, one backward pass for all tokens and
views), which gives σ_i = sqrt(λ·N / (2·T·c_i)) per token, clipped into (0, bound); ``random`` — the authors' start,
r ~ N(0, 1); ``half`` — σ = bound/2. Restarts after the first start from ``random``. The winner per (view, sentence) is
the start with the lowest objective re-estimated with ``eval_samples`` noise draws shared by all starts (common random
numbers), so the comparison is not decided by sampling noise.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from worker.models.base import Adapter, Encoding, InputError

INITS = ("linear", "random", "half")
NORMALIZATIONS = ("std", "mean_square")
OPTIMIZERS = ("newton", "adam")
LOG_2PI_E = math.log(2 * math.pi * math.e)


@dataclass(frozen=True)
class View:
    """One state s to explain: a layer, or one step of a B×T×H layer (timestamp mode)."""

    layer: str
    step: int | None = None

    @property
    def name(self) -> str:
        return self.layer if self.step is None else f"{self.layer}@{self.step}"


@dataclass
class Settings:
    lam: float = 0.1
    bound: float = 0.556
    normalization: str = "std"
    samples: int = 4
    max_steps: int = 600
    lr: float = 0.1
    init: str = "linear"
    restarts: int = 1
    eval_samples: int = 64  # 256 before issue 20: half of a Newton fit's time, for a reported number
    probes: int = 8  # Hutchinson probes for the linear start
    patience: int = 40
    tol: float = 2e-3  # relative loss improvement that counts as progress
    decays: int = 3
    batch_limit: int = 512  # most sequences in one forward pass (objective estimates are chunked to this)
    optimizer: str = "newton"  # "newton": per-token Newton on log σ (fit_newton); "adam": Adam on r (the old default)
    newton_tol: float = 0.02  # Newton: a group has converged when no token's log σ moves by more than this


@dataclass
class Fit:
    """σ for every (view, sentence): ``sigma[v]`` is B×T (padding: NaN); objectives per start and for the winner."""

    views: list[View]
    sigma: list[torch.Tensor]  # per view: B×T
    objective: torch.Tensor  # V×B, re-estimated with eval_samples draws
    start_objectives: torch.Tensor  # R×V×B
    winner: torch.Tensor  # V×B long: index of the start that won
    starts: list[str]  # R: the init of each start
    steps: int
    converged: torch.Tensor  # R×V×B bool
    normalization: str
    settings: Settings
    history: list[float] = field(default_factory=list)  # mean training loss per step (diagnostics)


# ----------------------------------------------------------------------------------------------- states
def _order(adapter: Adapter, views: Sequence[View]) -> str:
    names = adapter.layer_names
    unknown = sorted({v.layer for v in views if v.layer not in names})
    if unknown:
        raise InputError(f"unknown layer(s) {unknown}; {adapter.name} has {names}")
    return max((v.layer for v in views), key=names.index)


def states(adapter: Adapter, x: torch.Tensor, encoding: Encoding, views: Sequence[View]) -> list[torch.Tensor]:
    """Each view's state for inputs x (B×T×K), as B×T'×H or B×H, running only as deep as the deepest view."""
    layers = list(dict.fromkeys(v.layer for v in views))
    trace = adapter.forward(x, encoding, capture=layers, upto=_order(adapter, views))
    out = []
    for v in views:
        h = trace.layers[v.layer]
        if v.step is not None:
            if h.dim() != 3 or not 0 <= v.step < h.shape[1]:
                raise InputError(f"{v.layer} has no step {v.step} (shape {tuple(h.shape)})")
            h = h[:, v.step]
        out.append(h)
    return out


def _flat(states_: list[torch.Tensor]) -> list[torch.Tensor]:
    return [h.reshape(h.shape[0], -1) for h in states_]


def element_weights(encoding: Encoding, views: Sequence[View], s: list[torch.Tensor], normalization: str,
                    stats: dict[str, torch.Tensor] | None) -> tuple[list[torch.Tensor], str]:
    """Per view a B×E weight w_e = mask_e / (σ_S,e² · N_b), so that a sentence's loss is Σ_e w_e (s̃_e − s_e)².

    s: the views' states as :func:`states` returns them. mask: the real positions of a B×T×H state whose T is the
    encoding's (every element otherwise, e.g. decoder steps, pool, output); N_b: the sentence's count of masked
    elements. ``std`` needs ``stats[layer]`` (H: per-unit std over reference inputs); when a requested layer has none,
    every view falls back to ``mean_square``, and the returned name says which normalisation was used.
    """
    if normalization == "std" and (stats is None or any(v.layer not in stats for v in views)):
        normalization = "mean_square"
    tokens = encoding.attention_mask.to(s[0].device).to(s[0].dtype)  # B×T
    out: list[torch.Tensor] = []
    for sv in s:
        if sv.dim() == 3 and sv.shape[1] == tokens.shape[1]:
            mask = tokens[:, :, None].expand_as(sv)
        else:
            mask = torch.ones_like(sv)
        mask, flat = mask.reshape(sv.shape[0], -1), sv.reshape(sv.shape[0], -1)
        count = mask.sum(1, keepdim=True)
        if normalization == "std" and stats is not None:
            var = stats[views[len(out)].layer].to(flat).clamp_min(1e-6) ** 2
            var = var.repeat(flat.shape[1] // var.numel())[None]
        else:
            var = ((flat ** 2) * mask).sum(1, keepdim=True) / count
        out.append(mask / (var * count))
    return out, normalization


# ----------------------------------------------------------------------------------------------- objective
def _noisy_states(adapter: Adapter, x: torch.Tensor, encoding: Encoding, views: Sequence[View],
                  sigma: torch.Tensor, noise: torch.Tensor,
                  skip: Sequence[bool] | None = None) -> list[torch.Tensor | None]:
    """sigma: G×V×B×T, noise: n×G×V×B×T×K -> per view v the states of its copies, n×G×B×E (None where skip[v]).

    One forward pass per layer, over the copies of that layer's views only, run only as deep as that layer (views
    of one layer, e.g. the time steps of timestamp mode, share their pass)."""
    n, g, nv, b = noise.shape[:4]
    out: list[torch.Tensor | None] = [None] * nv
    for layer in dict.fromkeys(v.layer for v in views):
        group = [i for i, v in enumerate(views) if v.layer == layer and not (skip is not None and skip[i])]
        if not group:
            continue
        xt = x[None, None, None] + sigma[None, :, group, ..., None] * noise[:, :, group]  # n×G×V'×B×T×K
        flat = xt.reshape(n * g * len(group) * b, *x.shape[1:])
        got = _flat(states(adapter, flat, encoding.repeat(n * g * len(group)), [views[i] for i in group]))
        for j, i in enumerate(group):
            out[i] = got[j].reshape(n, g, len(group), b, -1)[:, :, j]
    return out


def _fit_loss(s_noisy: list[torch.Tensor | None], s: list[torch.Tensor], weights: list[torch.Tensor],
              sigma: torch.Tensor, tokens: torch.Tensor, settings: Settings) -> torch.Tensor:
    """G×V×B objective (noise term averaged over the n copies; 0 for a skipped view)."""
    g, b = sigma.shape[0], sigma.shape[2]
    fit = torch.stack([((sn - sv[None, None]) ** 2 * w[None, None]).sum(-1).mean(0) if sn is not None
                       else sigma.new_zeros(g, b)
                       for sn, sv, w in zip(s_noisy, s, weights, strict=True)], dim=1)  # G×V×B
    logs = (torch.log(sigma.clamp_min(1e-30) / settings.bound) * tokens).sum(-1) / tokens.sum(-1)
    return fit - settings.lam * logs


def objective(adapter: Adapter, x: torch.Tensor, encoding: Encoding, views: Sequence[View], sigma: torch.Tensor,
              s: list[torch.Tensor], weights: list[torch.Tensor], settings: Settings,
              generator: torch.Generator) -> torch.Tensor:
    """The objective of sigma (G×V×B×T) re-estimated with ``settings.eval_samples`` draws: G×V×B.

    The same draws are used for every g (common random numbers), so starts are compared on equal terms."""
    g, nv, b, t = sigma.shape
    tokens = encoding.attention_mask.to(x).to(x.dtype)
    per_pass = max(1, settings.batch_limit // (g * nv * b))
    total = torch.zeros(g, nv, b, dtype=x.dtype, device=x.device)
    done = 0
    with torch.no_grad():
        while done < settings.eval_samples:
            n = min(per_pass, settings.eval_samples - done)
            eps = _draw((n, 1, nv, b, t, x.shape[-1]), generator, x).expand(-1, g, -1, -1, -1, -1)
            sn = _noisy_states(adapter, x, encoding, views, sigma, eps * tokens[None, None, None, :, :, None])
            fit = torch.stack([((v_ - sv[None, None]) ** 2 * w[None, None]).sum(-1).sum(0)
                               for v_, sv, w in zip(sn, s, weights, strict=True)], dim=1)
            total += fit
            done += n
    logs = (torch.log(sigma.clamp_min(1e-30) / settings.bound) * tokens).sum(-1) / tokens.sum(-1)
    return total / settings.eval_samples - settings.lam * logs


def _draw(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


# ----------------------------------------------------------------------------------------------- starts
def jacobian_norms(adapter: Adapter, x: torch.Tensor, encoding: Encoding, views: Sequence[View],
                   weights: list[torch.Tensor], probes: int, generator: torch.Generator) -> torch.Tensor:
    """c[v, b, i] ≈ ‖W_v^½ J_{v,i}‖²_F, the weighted squared Frobenius norm of the Jacobian of view v's state with
    respect to token i's embedding, by Hutchinson: E_u ‖(W^½ u)ᵀ J_i‖² with u ~ N(0, I). One backward pass for all
    probes, views and tokens (V×B×T)."""
    nv, b = len(views), x.shape[0]
    xr = x[None].expand(probes * nv, -1, -1, -1).reshape(probes * nv * b, *x.shape[1:]).detach().requires_grad_(True)
    with torch.enable_grad():
        out = _flat(states(adapter, xr, encoding.repeat(probes * nv), views))
        total = 0.0
        for v, (o, w) in enumerate(zip(out, weights, strict=True)):
            o = o.reshape(probes, nv, b, -1)[:, v]
            u = _draw(tuple(o.shape), generator, o) * w.sqrt()[None]
            total = total + (o * u).sum()
        (grad,) = torch.autograd.grad(total, xr)
    grad = grad.reshape(probes, nv, b, *x.shape[1:])
    return (grad ** 2).sum(-1).mean(0)  # V×B×T


def linear_start(c: torch.Tensor, tokens: torch.Tensor, settings: Settings) -> torch.Tensor:
    """σ minimising Σ_i σ_i² c_i − λ·mean_i log σ_i (the small-noise objective) per token: σ_i² = λ / (2·T·c_i),
    clipped into [1e-3, 0.999]·bound. c: V×B×T; tokens: B×T."""
    count = tokens.sum(-1)[None, :, None]
    sigma = torch.sqrt(settings.lam / (2 * count * c.clamp_min(1e-30)))
    return sigma.clamp(1e-3 * settings.bound, 0.999 * settings.bound)


def _logit(sigma: torch.Tensor, bound: float) -> torch.Tensor:
    p = (sigma / bound).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


# ----------------------------------------------------------------------------------------------- optimizers
@dataclass
class _Problem:
    """What both optimisers need: the inputs, the clean states s, their weights, the token mask (B×T)."""

    adapter: Adapter
    x: torch.Tensor
    encoding: Encoding
    views: list[View]
    s: list[torch.Tensor]
    weights: list[torch.Tensor]
    tokens: torch.Tensor
    settings: Settings
    generator: torch.Generator

    def loss_and_grad(self, param: torch.Tensor, to_sigma: Callable[[torch.Tensor], torch.Tensor],
                      eps: torch.Tensor, skip: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampled objective (G×V×B) for the noise copies eps and its gradient with respect to param."""
        param = param.detach().requires_grad_(True)
        with torch.enable_grad():
            sigma = to_sigma(param)
            sn = _noisy_states(self.adapter, self.x, self.encoding, self.views, sigma, eps, skip=skip)
            loss = _fit_loss(sn, self.s, self.weights, sigma, self.tokens, self.settings)
            (grad,) = torch.autograd.grad(loss.sum(), param)
        return loss.detach(), grad * self.tokens


def _newton(problem: _Problem, sigma: torch.Tensor, progress: Callable[[float], None]
            ) -> tuple[torch.Tensor, int, torch.Tensor, list[float]]:
    """Per-token fixed-point (Newton) steps on u = log σ from the start sigma (R×V×B×T).

    The objective is stationary in u_i where g_i = λ/T, g_i = σ_i ∂fit/∂σ_i (the gradient of the noise term). Write
    g_i = a_i σ_i²: in the small-noise regime a_i is the constant c_i of the linear start (exact for a linear Φ, whose
    cross-token terms vanish in expectation), so σ_i² = (λ/T) / a_i is the fixed point, which is a Newton step on u_i
    when the noise term is quadratic in σ; where it is not, a_i moves slowly with σ and the iteration still has the
    stationary point as its only fixed point. The sampled a_i of a transformer are heavy-tailed (a few draws move the
    state far more than others), so each step uses the running mean ā_i of all steps' samples, step k weighted ∝ k
    (later σ count more; noise falls as more draws are averaged), and moves are clipped to ±1 in u and σ to the bound.
    Each step draws ``samples`` noise copies once for all starts and views (common random numbers). A group stops
    when, after ``patience // 4`` steps, no token has moved by more than ``newton_tol`` in the step, or at
    ``max_steps``."""
    settings, tokens = problem.settings, problem.tokens
    r_count, nv, b, t = sigma.shape
    k = problem.x.shape[-1]
    pull = (settings.lam / tokens.sum(-1))[None, None, :, None]  # λ/T per sentence
    top = math.log(settings.bound * (1 - 1e-3))
    floor = math.log(settings.bound * 1e-6)  # below this a token is kept whole; keeps σ² away from 0 (a = g/σ²)
    u = sigma.clamp_min(1e-30).log().clamp(floor, top)
    done = torch.zeros(r_count, nv, b, dtype=torch.bool, device=u.device)
    mean_a, weight = torch.zeros_like(u), 0.0
    history: list[float] = []
    step = 0
    for step in range(1, settings.max_steps + 1):
        eps = _draw((settings.samples, 1, 1, b, t, k), problem.generator, problem.x)
        eps = (eps * tokens[None, None, None, :, :, None]).expand(-1, r_count, nv, -1, -1, -1)
        loss, grad = problem.loss_and_grad(u, torch.exp, eps, skip=done.all(2).all(0).tolist())
        a = (grad + pull * tokens) / torch.exp(2 * u)  # g / σ²; the log term's gradient is −λ/T
        weight += step
        mean_a += (a - mean_a) * (step / weight)
        target = 0.5 * torch.log(pull / mean_a.clamp_min(1e-30))
        new = (u + (target - u).clamp(-1.0, 1.0) * tokens).clamp(floor, top)
        moved = ((new - u).abs() * tokens).amax(-1)  # R×V×B
        u = torch.where(done[..., None], u, new)
        done |= (moved < settings.newton_tol) & (step >= settings.patience // 4)
        history.append(float(loss.mean()))
        progress(0.9 * max(step / settings.max_steps, float(done.float().mean())))
        if bool(done.all()):
            break
    return u.exp(), step, done, history


def _adam(problem: _Problem, r: torch.Tensor, progress: Callable[[float], None]
          ) -> tuple[torch.Tensor, int, torch.Tensor, list[float]]:
    """Adam on r (σ = bound · sigmoid(r)), by hand, so that each (start, view, sentence) group has its own step size
    and stops on its own (module docstring)."""
    settings, x, tokens = problem.settings, problem.x, problem.tokens
    r_count, nv, b, t = r.shape
    k = x.shape[-1]
    m = torch.zeros_like(r)
    v2 = torch.zeros_like(r)
    beta1, beta2, eps_adam = 0.9, 0.999, 1e-8
    lr = torch.full((r_count, nv, b, 1), settings.lr, dtype=x.dtype, device=x.device)
    ema = torch.full((r_count, nv, b), float("nan"), dtype=x.dtype, device=x.device)
    best = torch.full_like(ema, float("inf"))
    since = torch.zeros_like(ema)
    decays = torch.zeros_like(ema)
    done = torch.zeros(r_count, nv, b, dtype=torch.bool, device=x.device)
    samples = max(1, min(settings.samples, settings.batch_limit // (r_count * nv * b) or 1))

    def to_sigma(param: torch.Tensor) -> torch.Tensor:
        return settings.bound * torch.sigmoid(param)

    history = []
    step = 0
    for step in range(1, settings.max_steps + 1):
        eps = _draw((samples, r_count, nv, b, t, k), problem.generator, x) * tokens[None, None, None, :, :, None]
        # views whose every (start, sentence) group has stopped are not run any more (they no longer move)
        value, grad = problem.loss_and_grad(r, to_sigma, eps, skip=done.all(2).all(0).tolist())
        with torch.no_grad():
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            mhat = m / (1 - beta1 ** step)
            vhat = v2 / (1 - beta2 ** step)
            active = (~done).to(x.dtype)[..., None]
            r = r - active * lr * mhat / (vhat.sqrt() + eps_adam)
            ema = torch.where(torch.isnan(ema), value, 0.9 * ema + 0.1 * value)
            improved = ema < best - settings.tol * best.abs().clamp_min(1e-3)
            best = torch.where(improved, ema, best)
            since = torch.where(improved, torch.zeros_like(since), since + 1)
            plateau = (since >= settings.patience) & ~done
            decays += plateau.to(decays.dtype)
            lr = torch.where(plateau[..., None], lr * 0.5, lr)
            since = torch.where(plateau, torch.zeros_like(since), since)
            best = torch.where(plateau, ema, best)
            done |= decays >= settings.decays
            history.append(float(value.mean()))
        progress(0.9 * max(step / settings.max_steps, float(done.float().mean())))
        if bool(done.all()):
            break
    return to_sigma(r), step, done, history


# ----------------------------------------------------------------------------------------------- fit
def fit(
    adapter: Adapter,
    encoding: Encoding,
    views: Sequence[View],
    settings: Settings,
    stats: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    progress: Callable[[float], None] = lambda fraction: None,
    x: torch.Tensor | None = None,
) -> Fit:
    """Minimise the objective for every view and every sentence of `encoding` (module docstring)."""
    views = list(views)
    if not views:
        raise InputError("sigma needs at least one layer")
    if settings.init not in INITS:
        raise InputError(f"init must be one of {INITS}")
    if settings.optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer must be one of {OPTIMIZERS}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    x = adapter.embed(encoding) if x is None else x
    x = x.detach()
    tokens = encoding.attention_mask.to(x.device).to(x.dtype)  # B×T
    with torch.no_grad():
        raw = states(adapter, x, encoding, views)
    weights, normalization = element_weights(encoding, views, raw, settings.normalization, stats)
    s = [sv.detach() for sv in _flat(raw)]
    nv, (b, t, _) = len(views), x.shape
    r_count = max(1, settings.restarts)
    starts = [settings.init] + ["random"] * (r_count - 1)

    inits = []
    for name in starts:
        if name == "linear":
            c = jacobian_norms(adapter, x, encoding, views, weights, settings.probes, generator)
            inits.append(_logit(linear_start(c, tokens, settings), settings.bound))
        elif name == "random":
            inits.append(_draw((nv, b, t), generator, x))
        else:
            inits.append(torch.zeros(nv, b, t, dtype=x.dtype, device=x.device))
    r = torch.stack(inits)  # R×V×B×T
    problem = _Problem(adapter, x, encoding, views, s, weights, tokens, settings, generator)
    if settings.optimizer == "newton":
        sigma, step, done, history = _newton(problem, settings.bound * torch.sigmoid(r), progress)
    else:
        sigma, step, done, history = _adam(problem, r, progress)

    with torch.no_grad():
        objectives = objective(adapter, x, encoding, views, sigma, s, weights, settings, generator)  # R×V×B
        winner = objectives.argmin(0)  # V×B
        chosen = sigma.gather(0, winner[None, ..., None].expand(1, -1, -1, t))[0]  # V×B×T
        chosen = torch.where(tokens[None] > 0, chosen, torch.full_like(chosen, float("nan")))
    progress(1.0)
    return Fit(views=views, sigma=[chosen[i] for i in range(nv)], objective=objectives.gather(0, winner[None])[0],
               start_objectives=objectives, winner=winner, starts=starts, steps=step, converged=done,
               normalization=normalization, settings=settings, history=history)


# ----------------------------------------------------------------------------------------------- entropies
def token_entropy(sigma: torch.Tensor, k: int) -> torch.Tensor:
    """H_i = K/2·log(2πe) + K·log σ_i (Eq. 6): the entropy of the Gaussian N(x_i, σ_i² I_K)."""
    return 0.5 * k * LOG_2PI_E + k * torch.log(sigma)


def scores(sigma: torch.Tensor, bound: float) -> torch.Tensor:
    """−log(σ_i / bound): 0 at the bound (all discarded), larger = more of the word kept (docs/extending.md)."""
    return -torch.log(sigma / bound)
