"""The methods on a generative model beyond the gradients and occlusion (docs/api.md, generative models): each reuses
its classifier version's core on the whole sequence (prompt + generated or given tokens), made per step where it
scores tokens. Registered in ``worker.methods.generation.RUNS``.

Per step (an S×T ``scores`` matrix like the gradient methods'; the job adds ``word_scores``, per-step
``faithfulness`` and the steps × tokens figure):

- ``lime``: one masked copy of the sequence serves every step (step s reads only tokens < P+s), so the masks are
  drawn once over the sequence's features (:func:`worker.methods.lime.sample_design`, the job's seed), each copy runs
  once, and step s fits LIME's local model (:func:`worker.methods.lime.local_model`) of p(y_s) (minus p(b_s) with a
  contrast) on the columns of the features it reads. Word features: the prompt's words and each generated token.
  JSON besides the step fields: ``unit``, ``samples``, ``intercept`` [S], ``r2`` [S] (``null`` for a step that reads
  no feature: nothing to fit), ``features`` [S] (how many features step s's fit has). Tensors: ``coefficients`` (S×d, 0 for features a step does not read), ``design``
  (samples×d), ``targets`` (samples×S), ``weights`` (samples×S).
- ``attention``: one forward pass; step s's row is row P+s−1 of each layer's causal attention map (what the position
  that predicts y_s reads). ``scores`` = the head average of ``figure_layer`` (default: the last layer). JSON:
  ``view: "generation"``, ``figure_layer``, ``heads``, ``shape`` [L, H, S, T], ``layer_rows``: {``attention.k``: S×T
  head averages, ``null`` where unread} (not ``layers``: a classifier's attention lists its layer names there).
  Tensors: ``attention`` (L×H×S×T), ``head_average`` (L×S×T).
- ``attention_rollout``: the rollout R = Â_L⋯Â_1 of the whole sequence (:func:`worker.methods.attention_maps.rollout`,
  ``residual``); step s's scores are row P+s−1 of R (causal: zero beyond it, sums to 1). JSON: ``residual``.
  Tensors: ``rollout`` (T×T).

Per layer × token (no step; ``scores`` absent, the document's keys name the layers):

- ``sigma``: the classifier method (:mod:`worker.methods.sigma`, same params and document: ``layers: {name: {sigma,
  scores, entropy, word_*, ...}}``, ``timestamps``, ``bound``, ``normalization``, …) on the sequence; the state s of
  ``layer.k`` is its hidden states at every position. Causality: token i reaches only positions ≥ i, so the last
  tokens touch fewer states; compare a token across layers, and use ``timestamps`` (e.g. ``["layer.4"]``: the state
  at each position alone, the one at P+s−1 being what predicts y_s) for a per-position view.
- ``activations``: the classifier method (:mod:`worker.methods.activations`: ``layer``, ``neurons``, ``traces``, …)
  on the sequence, plus ``norms``: {layer: [T]}, the L2 norm of every per-token layer's state at each token
  (``embeddings`` = the word embeddings fed to the model; ``layer.L`` after the final norm, as HF reports it).
  Tensors: ``states``, ``traces`` (as the classifier's), ``norms`` (layers × T).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from worker.methods.generation_steps import Progress, StepResult, Steps, masked_by_step
from worker.models.base import Adapter


# ---------------------------------------------------------------------------------------------------- per step
def run_lime(adapter: Adapter, steps: Steps, params: Mapping[str, Any], progress: Progress) -> StepResult:
    from worker.methods.lime import features, local_model, sample_design

    progress(0.0)
    one = steps.encoding
    groups = features(one, params["unit"])
    S, T, d, n = steps.count, len(one.tokens[0]), len(groups), int(params["samples"])
    design = sample_design(d, n, torch.Generator().manual_seed(steps.seed))
    member = torch.zeros(d, T)  # feature × token
    for f, group in enumerate(groups):
        member[f, group] = 1.0
    drop = ((1.0 - design) @ member) > 0  # samples × T
    targets = masked_reads(adapter, dataclasses.replace(steps, score="probability"), drop, int(params["batch_size"]),
                           progress)  # samples × S
    scores = torch.zeros((S, T), dtype=torch.float64)
    coefficients = torch.zeros((S, d), dtype=torch.float64)
    weights = torch.zeros((n, S), dtype=torch.float64)
    intercepts: list[float] = []
    r2s: list[float | None] = []  # None: a step that reads no feature
    counts: list[int] = []
    for s in range(S):
        read = [f for f, group in enumerate(groups) if steps.reads_group(s, group)]
        counts.append(len(read))
        if not read:  # a prompt of specials only has nothing to weigh at step 0
            intercepts.append(float(targets[0, s]))
            r2s.append(None)
            continue
        b, c, r2, w = local_model(design[:, read], targets[:, s], params["kernel_width"], params["ridge"])
        coefficients[s, read], weights[:, s] = b, w
        intercepts.append(c)
        r2s.append(r2)
        for f, value in zip(read, b.tolist(), strict=True):
            scores[s, groups[f]] = value / len(groups[f])  # a word's coefficient split over its tokens
    progress(1.0)
    return StepResult(scores, {"coefficients": coefficients.float(), "design": design, "targets": targets.float(),
                               "weights": weights.float()},
                      {"unit": params["unit"], "samples": n, "intercept": intercepts, "r2": r2s, "features": counts},
                      f"LIME ({n} samples, {params['unit']}s)")


def masked_reads(adapter: Adapter, steps: Steps, drop: torch.Tensor, batch_size: int,
                 progress: Progress) -> torch.Tensor:
    """Every step's score on each masked copy of the sequence (drop: N×T bool, masked at the id level): N×S,
    float64 on the CPU, one forward pass per `batch_size` copies (fewer under the logits' budget)."""
    out = []
    per_pass = steps.rows_per_pass(adapter, batch_size)
    with torch.no_grad():
        for k, rows in enumerate(drop.split(per_pass)):
            masked = adapter.mask(steps.encoding.repeat(len(rows)), rows)
            out.append(steps.each(steps.logits(adapter, adapter.embed(masked))).double().cpu())
            progress(0.95 * min(1.0, (k + 1) * per_pass / len(drop)))
    return torch.cat(out)


def step_rows(matrix: torch.Tensor, steps: Steps) -> torch.Tensor:
    """Rows P−1 … P+S−2 of a …×T×T map (the positions whose logits predict y_0 … y_{S−1}): …×S×T."""
    return matrix[..., steps.prompt_length - 1:steps.prompt_length - 1 + steps.count, :]


def run_attention(adapter: Adapter, steps: Steps, params: Mapping[str, Any], progress: Progress) -> StepResult:
    from worker.methods.attention_maps import self_attention

    progress(0.0)
    weights = step_rows(self_attention(adapter, steps.encoding), steps)  # L×H×S×T
    average = weights.mean(1)  # L×S×T
    names = list(adapter.attention_names)
    layer = params.get("figure_layer") or names[-1]
    return StepResult(average[names.index(layer)].clone(),  # its own storage: safetensors refuses shared tensors
                      {"attention": weights.contiguous(), "head_average": average.contiguous()},
                      {"view": "generation", "figure_layer": layer, "heads": int(weights.shape[1]),
                       "shape": list(weights.shape),
                       "layer_rows": {name: masked_by_step(average[k], steps) for k, name in enumerate(names)}},
                      f"attention of {layer} (head average)")


def run_attention_rollout(adapter: Adapter, steps: Steps, params: Mapping[str, Any],
                          progress: Progress) -> StepResult:
    from worker.methods.attention_maps import rollout, self_attention

    progress(0.0)
    flow = rollout(self_attention(adapter, steps.encoding), params["residual"])  # T×T, lower triangular
    return StepResult(step_rows(flow, steps).clone(), {"rollout": flow.float().contiguous()}, {"residual": params["residual"]},
                      f"attention rollout (residual {params['residual']:g})")


# ---------------------------------------------------------------------------------------------------- per layer
def run_sigma(adapter: Adapter, steps: Steps, params: Mapping[str, Any], progress: Progress) -> StepResult:
    from worker.methods.sigma import run

    layers = list(steps.layers) if steps.layers else None
    out = run(adapter, steps.encoding, None, dict(params), layers, progress, steps.seed)
    return StepResult(None, out.tensors, out.json, "sigma", out.figures)


def run_activations(adapter: Adapter, steps: Steps, params: Mapping[str, Any], progress: Progress) -> StepResult:
    from worker.methods.activations import per_token_layers, run

    one = steps.encoding
    out = run(adapter, one, None, dict(params), None, progress, steps.seed)
    names = per_token_layers(adapter)
    with torch.no_grad():
        trace = adapter.forward(adapter.embed(one), one, capture=names)
    norms = torch.stack([trace.layers[name][0].double().norm(dim=-1).cpu() for name in names])  # layers × T

    def norms_png() -> bytes:
        from worker.render.maps import heatmaps_png

        return heatmaps_png([("L2 norm of the state at each token", norms.numpy())], names, one.tokens[0],
                            f"hidden-state norms — {adapter.name}", "rows: layers, columns: tokens (prompt, then "
                            "generated)", columns=1, colour_label="‖h‖")

    return StepResult(None, {**out.tensors, "norms": norms.float()},
                      {**out.json, "norms": {name: norms[k].tolist() for k, name in enumerate(names)}},
                      "activations", {**out.figures, "norms": norms_png})


RUNS: dict[str, Callable[[Adapter, Steps, Mapping[str, Any], Progress], StepResult]] = {
    "lime": run_lime,
    "attention": run_attention,
    "attention_rollout": run_attention_rollout,
    "sigma": run_sigma,
    "activations": run_activations,
}
