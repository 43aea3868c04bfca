"""Explaining a generative language model step by step (docs/api.md, generative models).

A job on a model that offers ``generation`` (:class:`worker.models.causal_lm.CausalLMAdapter`) gives a prompt of P
tokens and either generates S tokens (greedy unless ``generate.do_sample``) or takes a given ``continuation`` of S
tokens (forced decoding). Step s (0 ≤ s < S) explains the token y_s at position P+s from every earlier token; its
score is S_s = f(logits at position P+s−1)[y_s], f the request's ``score`` (logit, probability or log-probability),
minus f(…)[b_s] when a ``contrast`` token b_s is given (why y_s rather than b_s; Yin & Neubig 2022).

Every step at once: causal masking makes all S steps' logits one forward pass over the P+S tokens, and a step's
score depends only on the tokens before it, so each row of a pass is cut to the tokens its step reads. The gradient
methods run one backward pass per batch of (step, path point) rows — each row's gradient is its own step's — with at
most ``internal_batch_size`` rows per pass (memory bounded for long prompts).

Methods (the token-scoring definitions of their classifier versions, per step):
- ``gradient``: mean |∂S_s/∂x_t| (or its L2 norm) over the K embedding dimensions;
- ``grad_x_input``: Σ_k x_tk ∂S_s/∂x_tk;
- ``integrated_gradients``: Σ_k (x − x')_tk ∫ ∂S_s/∂x_tk along x' + α(x − x') (``baseline`` ``zero`` or
  ``mask``: every non-special token replaced by the model's unk/pad token), the same quadrature as the classifier
  method; ``delta`` per step is its completeness gap;
- ``occlusion``: leave-one-out per token, one occluded copy serving every step;
- ``lime``, ``attention``, ``attention_rollout`` (per step) and ``sigma``, ``activations`` (per layer × token, no
  ``scores``): :mod:`worker.methods.generation_methods`.

Scores are S×T matrices (``null`` at positions ≥ P+s, which step s cannot read) with ``word_scores`` per word and
``faithfulness`` per step (:mod:`worker.methods.faithfulness` on the prefix of that step, on the probability of y_s;
the S prefixes in shared passes: ``faithfulness_batch``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from worker.methods.base import word_scores
from worker.methods.faithfulness import FULL, NONE, faithfulness_batch
from worker.methods.generation_methods import RUNS as OTHER_RUNS
from worker.methods.generation_steps import Progress, StepResult, Steps, masked_by_step
from worker.methods.gradient import aggregate
from worker.methods.integrated_gradients import quadrature
from worker.methods.perturb import baseline_embedding
from worker.models.base import Adapter, Encoding

DEFAULT_NEW_TOKENS = 16
GRADIENT_ROWS = 32  # steps per pass of gradient and grad_x_input
IG_STEPS = 32  # integrated gradients' points when `steps` is not given (no adaptive rule per step here)


def step_gradients(adapter: Adapter, steps: Steps, points: torch.Tensor, weights: torch.Tensor,
                   rows_per_pass: int = 16, progress: Progress = lambda fraction: None) -> torch.Tensor:
    """Σ_m weights[m] · ∂S_s/∂x at points[m], for every step s: S×T×K.

    points: M×T×K inputs (the embeddings; or IG's path points). The S·M (step, point) rows run in passes of at most
    `rows_per_pass`, ordered by step so that each pass is cut to the tokens its last step reads (the others are
    exact zeros by causality)."""
    S, (M, T, K) = steps.count, points.shape
    total = torch.zeros((S, T, K), dtype=points.dtype, device=points.device)
    pairs = [(s, m) for s in range(S) for m in range(M)]
    passes = math.ceil(len(pairs) / rows_per_pass)
    for n in range(passes):
        chunk = pairs[n * rows_per_pass:(n + 1) * rows_per_pass]
        s_idx = torch.tensor([s for s, _ in chunk], device=points.device)
        m_idx = torch.tensor([m for _, m in chunk], device=points.device)
        width = steps.reads(int(s_idx.max()))
        x = points[m_idx, :width].detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(steps.of(steps.logits(adapter, x, s_idx), s_idx).sum(), x)
        total[:, :width].index_add_(0, s_idx, weights[m_idx].view(-1, 1, 1).to(grad.dtype) * grad)
        progress((n + 1) / passes)
    return total


def integrated_step_gradients(adapter: Adapter, steps: Steps, x: torch.Tensor, baseline: torch.Tensor,
                              params: Mapping[str, Any], progress: Progress) -> torch.Tensor:
    """S×T×K integrated gradients of every step: (x − x') ⊙ the quadrature of ∂S_s/∂x along the path."""
    alphas, weights = quadrature(int(params["steps"] or IG_STEPS), params["method"])
    alphas, weights = alphas.to(x.dtype).to(x.device), weights.to(x.dtype).to(x.device)
    diff = x - baseline  # 1×T×K
    points = baseline + alphas.view(-1, 1, 1) * diff  # M×T×K
    return diff * step_gradients(adapter, steps, points, weights, int(params["internal_batch_size"]), progress)


# ---------------------------------------------------------------------------------------------------- methods
def run_gradient(adapter: Adapter, steps: Steps, params: Mapping[str, Any], progress: Progress) -> StepResult:
    x = adapter.embed(steps.encoding).detach()
    grad = step_gradients(adapter, steps, x, torch.ones(1, dtype=x.dtype), GRADIENT_ROWS, progress)
    return StepResult(aggregate(grad, params["aggregate"]), {"gradient": grad}, {"aggregate": params["aggregate"]},
                      "gradient saliency |∂S/∂x|")


def run_grad_x_input(adapter: Adapter, steps: Steps, params: Mapping[str, Any], progress: Progress) -> StepResult:
    x = adapter.embed(steps.encoding).detach()
    attribution = x * step_gradients(adapter, steps, x, torch.ones(1, dtype=x.dtype), GRADIENT_ROWS, progress)
    return StepResult(attribution.sum(-1), {"attribution": attribution}, {}, "gradient × input")


def run_integrated_gradients(adapter: Adapter, steps: Steps, params: Mapping[str, Any],
                             progress: Progress) -> StepResult:
    x = adapter.embed(steps.encoding).detach()
    baseline = baseline_embedding(adapter, steps.encoding, params["baseline"]).detach()
    attribution = integrated_step_gradients(adapter, steps, x, baseline, params, progress)
    with torch.no_grad():  # the completeness gap of each step: S(x) − S(x')
        ends = steps.each(steps.logits(adapter, torch.cat([x, baseline])))  # 2×S
        gap = ends[0] - ends[1]
    delta = [float(attribution[s, :steps.reads(s)].sum() - gap[s]) for s in range(steps.count)]
    count = params["steps"] or IG_STEPS  # steps not given: the fixed default (no adaptive rule here)
    return StepResult(attribution.sum(-1), {"attribution": attribution},
                      {"baseline": params["baseline"], "steps": count, "method": params["method"],
                       "delta": delta}, f"integrated gradients ({count} steps, {params['baseline']} baseline)")


def run_occlusion(adapter: Adapter, steps: Steps, params: Mapping[str, Any], progress: Progress) -> StepResult:
    """Leave-one-out per step: score[s, t] = S_s(x) − S_s(x with token t's embedding replaced by the baseline's),
    t a non-special token the step reads. One occluded copy per token serves every step at once (causality); the
    request's validation allows window 1 only."""
    from worker.methods.perturb import candidates

    x = adapter.embed(steps.encoding).detach()
    baseline = baseline_embedding(adapter, steps.encoding, params["baseline"]).detach()
    tokens = candidates(steps.encoding).tolist()
    copies = x.repeat(len(tokens) + 1, 1, 1)  # row 0: x itself
    for row, t in enumerate(tokens, 1):
        copies[row, t] = baseline[0, t]
    values = []
    rows = steps.rows_per_pass(adapter, int(params["batch_size"]))
    with torch.no_grad():
        for n, chunk in enumerate(copies.split(rows)):
            values.append(steps.each(steps.logits(adapter, chunk)))
            progress(min(1.0, (n + 1) * rows / len(copies)))
    scored = torch.cat(values)  # (1 + tokens) × S
    scores = torch.zeros((steps.count, x.shape[1]), dtype=x.dtype, device=x.device)
    for row, t in enumerate(tokens, 1):
        scores[:, t] = scored[0] - scored[row]
    return StepResult(scores, {"drops": scores.clone()}, {"window": 1, "baseline": params["baseline"],
                                                          "windows": len(tokens)}, "occlusion (leave one out)")


RUNS: dict[str, Callable[[Adapter, Steps, Mapping[str, Any], Progress], StepResult]] = {
    "gradient": run_gradient,
    "grad_x_input": run_grad_x_input,
    "integrated_gradients": run_integrated_gradients,
    "occlusion": run_occlusion,
    **OTHER_RUNS,  # lime, attention, attention_rollout (per step), sigma, activations (per layer)
}


# ---------------------------------------------------------------------------------------------------- the job
def sequence_of(adapter: Any, inputs: Mapping[str, str], generate: Mapping[str, Any] | None,
                seed: int) -> tuple[Encoding, int, list[int]]:
    """(prompt + continuation encoding, P, the S continuation ids): the given continuation, or the generated one."""
    prompt = adapter.encode(dict(inputs)).to(adapter.device)
    ids = prompt.input_ids[0].tolist()
    if inputs.get("continuation") is not None:
        new = adapter.continuation_ids(inputs["continuation"])
    else:
        options = dict(generate or {})
        new = adapter.generate(ids, int(options.get("max_new_tokens", DEFAULT_NEW_TOKENS)),
                               bool(options.get("do_sample", False)), seed)
    return adapter.extend(prompt, new), len(ids), new


def contrast_ids(adapter: Any, contrast: str | list[str] | None, count: int) -> list[int] | None:
    """b_s per step: one token for every step, or one per step (validation has checked they are known)."""
    if contrast is None:
        return None
    given = [contrast] * count if isinstance(contrast, str) else list(contrast)
    return [int(adapter.token_id(token)) for token in given]


Tensors = dict[str, dict[str, torch.Tensor]]


def explain_generation(adapter: Any, request: Any, provenance: dict[str, Any], progress: Progress = lambda f: None,
                       figures: bool = True) -> tuple[dict[str, Any], Tensors, dict[str, bytes]]:
    """A validated job request on a generative model -> (the result document, ``kind: "generation"``; tensors per
    method; figures by artifact name)."""
    encoding, P, new = sequence_of(adapter, request.inputs, request.generate, request.seed)
    if not new:
        from worker.models.base import InputError

        raise InputError("nothing to explain: the model generated no token (the prompt fills its context)")
    device = adapter.device
    contrast = contrast_ids(adapter, request.contrast, len(new))
    steps = Steps(encoding, P, torch.tensor(new, device=device),
                  None if contrast is None else torch.tensor(contrast, device=device), request.score,
                  seed=int(request.seed), layers=request.layers)
    with torch.no_grad():
        logits = steps.logits(adapter, adapter.embed(encoding))[0]  # S×V
    probabilities = logits.softmax(-1).gather(-1, steps.targets.view(-1, 1)).squeeze(-1).tolist()
    result = {
        "schema_version": 1, "kind": "generation", "tokens": encoding.tokens[0], "special": encoding.special[0],
        "words": encoding.words[0], "word_strings": encoding.word_strings(0), "prompt_length": P,
        "generation": {"tokens": adapter.token_strings(new), "token_ids": new, "probabilities": probabilities},
        "prediction": None, "target": None, "score": request.score, "methods": {},
        "provenance": provenance,
    }
    if contrast is not None:
        result["contrast"] = {"tokens": adapter.token_strings(contrast), "token_ids": contrast}
    tensors: Tensors = {}
    pngs: dict[str, bytes] = {}
    params = request.plain_params()
    for n, name in enumerate(request.methods):

        def step(fraction: float, n: int = n) -> None:
            progress((n + min(max(fraction, 0.0), 1.0)) / len(request.methods))

        torch.manual_seed(request.seed)
        started = time.perf_counter()
        out = RUNS[name](adapter, steps, params[name], step)
        seconds = time.perf_counter() - started
        result["methods"][name] = method_document(adapter, steps, out, params[name], request.seed, seconds,
                                                  request.faithfulness)
        scored = {} if out.scores is None else {"scores": out.scores}
        tensors[name] = {k: v.detach().cpu().contiguous() for k, v in {**scored, **out.tensors}.items()}
        if figures:
            pngs.update(method_figures(result, name, out))
    if figures:
        from worker.render.generation import probability_curve_png

        pngs["generation-probabilities.png"] = probability_curve_png(result)
    return result, tensors, pngs


def method_figures(result: dict[str, Any], name: str, out: StepResult) -> dict[str, bytes]:
    """A method's PNGs by artifact name: the steps × tokens map of a token-scoring method, then its own figures."""
    pngs = {}
    if out.scores is not None:
        from worker.render.generation import step_map_png

        pngs[f"{name}.png"] = step_map_png(result, name, out.title)
    for key, figure in out.figures.items():
        pngs[f"{name}-{key}.png" if key else f"{name}.png"] = figure() if callable(figure) else figure
    return pngs


def method_document(adapter: Adapter, steps: Steps, out: StepResult, params: dict[str, Any], seed: int,
                    seconds: float, level: str = FULL) -> dict[str, Any]:
    """One method's part of the result: S×T scores, S×W word scores, per-step faithfulness (at the request's
    `level`; none at ``none``, as a classifier's part has none), params and ``seconds`` (the method's own run, not its
    faithfulness, as for a classifier); a per-layer method: its own document, params and seconds."""
    timed = {"params": params, "seconds": round(seconds, 6)}
    if out.scores is None:
        return {**out.extra, **timed}
    scores = masked_by_step(out.scores, steps)
    words = steps.encoding.words[0]
    per_word = [[value if steps.reads_group(s, group) else None for group, value in
                 zip(words, word_scores([v or 0.0 for v in row], words), strict=True)] for s, row in enumerate(scores)]
    rankings = [[v or 0.0 for v in row[:steps.reads(s)]] for s, row in enumerate(scores)]
    faith = faithfulness_batch(adapter, steps.prefixes(), rankings, steps.targets, seed, level=level)  # all steps
    shown = {} if level == NONE else {"faithfulness": faith}
    return {"scores": scores, "word_scores": per_word, **shown, **out.extra, **timed}
