"""`activations`: per-neuron traces of one layer over the input's tokens, and the neurons worth looking at (Karpathy
et al. 2015, "Visualizing and understanding recurrent networks": the "quote cell" search).

For a per-token layer (``layer``; default: the deepest per-token layer, e.g. ``layer.6`` or ``lstm.2``) the states
h (T×H) are read in one forward pass. Neurons are ranked over the non-special tokens by

- ``rank_by="variance"``: the variance of h[:, j] over the tokens (the most active neurons), or
- ``rank_by="correlation"``: |Pearson correlation| between h[:, j] and a user pattern over the tokens. The pattern is
  ``pattern`` (one number per word, e.g. 1 inside quotes and 0 elsewhere; a word's value goes to all its tokens) or
  ``pattern_regex`` (a regular expression on the text: a word is 1 where its characters overlap a match, else 0;
  ``"[^"]*"`` marks quoted spans).

The ``top`` neurons' traces are returned (signed correlation kept). No target is needed: headless models run it.

JSON: ``{"layer", "rank_by", "neurons": [top indices], "traces": top×T, "variance": [per top neuron],
"correlation": [per top neuron] | null, "pattern": [per token] | null}``. Tensors: ``states`` (T×H), ``traces``
(top×T). Figure: the traces, neurons × words.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.methods.base import Method, MethodResult, Params, Target
from worker.methods.perturb import candidates
from worker.models.base import Adapter, Encoding, InputError


class ActivationsParams(Params):
    layer = ma.fields.String(load_default=None, allow_none=True,
                             metadata={"description": "a per-token layer (default: the deepest one)"})
    top = ma.fields.Integer(load_default=10, strict=True, validate=ma.validate.Range(1, 256),
                            metadata={"description": "how many neurons to return"})
    rank_by = ma.fields.String(load_default="variance", validate=ma.validate.OneOf(("variance", "correlation")),
                               metadata={"description": "rank neurons by variance or by correlation with a pattern"})
    pattern = ma.fields.List(ma.fields.Float(allow_nan=False), load_default=None, allow_none=True,
                             validate=ma.validate.Length(max=4096),
                             metadata={"description": "one number per word (rank_by=correlation)"})
    pattern_regex = ma.fields.String(load_default=None, allow_none=True, validate=ma.validate.Length(1, 200),
                                     metadata={"description": "regex on the text marking the words of the pattern"})


def per_token_layers(adapter: Adapter) -> list[str]:
    return [n for n in adapter.layer_names if n not in ("pool", "output")]


def token_pattern(encoding: Encoding, params: dict[str, Any]) -> torch.Tensor:
    """The user's pattern as one value per token of item 0 (module docstring)."""
    words = encoding.words[0]
    if params.get("pattern") is not None:
        values = params["pattern"]
        if len(values) != len(words):
            raise InputError(f"pattern has {len(values)} values; the input has {len(words)} words "
                             "(specials included, as in the result's word_strings)")
    elif params.get("pattern_regex") is not None:
        try:
            expression = re.compile(params["pattern_regex"])
        except re.error as err:
            raise InputError(f"pattern_regex is not a valid regular expression: {err}") from None
        item = encoding.inputs[0]
        text = item.get("text", item.get("premise", ""))
        spans = [m.span() for m in expression.finditer(text) if m.end() > m.start()]
        values = []
        for group in words:
            if any(encoding.special[0][t] or encoding.segments[0][t] != 0 for t in group):
                values.append(0.0)
                continue
            start, end = encoding.offsets[0][group[0]][0], encoding.offsets[0][group[-1]][1]
            values.append(float(any(a < end and start < b for a, b in spans)))
    else:
        raise InputError("rank_by=correlation needs pattern (one number per word) or pattern_regex")
    out = torch.zeros(len(encoding.tokens[0]), dtype=torch.float64)
    for value, group in zip(values, words, strict=True):
        out[group] = value
    return out


def correlation(states: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each column of states (N×H) with pattern (N); 0 for a constant neuron."""
    s = states - states.mean(0)
    p = pattern - pattern.mean()
    denominator = s.norm(dim=0) * p.norm()
    return torch.where(denominator > 0, (p @ s) / denominator.clamp_min(1e-300), torch.zeros_like(denominator))


def run(
    adapter: Adapter,
    encoding: Encoding,
    target: Target | None,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> MethodResult:
    progress(0.0)
    one = encoding.item(0)
    allowed = per_token_layers(adapter)
    layer = params["layer"] or allowed[-1]
    if layer not in allowed:
        raise InputError(f"activations need a per-token layer, one of {allowed}; got {layer!r}")
    with torch.no_grad():
        states = adapter.forward(adapter.embed(one), one, capture=[layer], upto=layer).layers[layer][0]
    states = states.double().cpu()  # T×H
    cand = candidates(one)
    rows = states[cand]
    variance = rows.var(0, unbiased=False)
    pattern, corr = None, None
    if params["rank_by"] == "correlation":
        pattern = token_pattern(one, params)
        if float(pattern[cand].std()) == 0.0:
            raise InputError("the pattern is constant over the input's tokens: nothing to correlate with")
        corr = correlation(rows, pattern[cand])
        order = torch.argsort(-corr.abs(), stable=True)
    else:
        order = torch.argsort(-variance, stable=True)
    top = order[: params["top"]]
    traces = states[:, top].T.contiguous()  # top×T

    def figure() -> bytes:
        from worker.methods.attention_maps import visible
        from worker.render.maps import heatmaps_png

        keep = visible(one, False)
        labels = [one.tokens[0][t] for t in keep]
        names = [f"{j}" + (f" (r={float(corr[j]):+.2f})" if corr is not None else "") for j in top.tolist()]
        panel = traces[:, keep].numpy()
        return heatmaps_png([(f"top {len(names)} neurons by {params['rank_by']}", panel)], names, labels,
                            f"activations of {layer} — {adapter.name}", "rows: neurons, columns: tokens",
                            columns=1, signed=True, colour_label="activation")

    return MethodResult(
        tensors={"states": states.float().contiguous(), "traces": traces.float()},
        json={"layer": layer, "rank_by": params["rank_by"], "neurons": top.tolist(), "traces": traces.tolist(),
              "variance": variance[top].tolist(),
              "correlation": None if corr is None else corr[top].tolist(),
              "pattern": None if pattern is None else pattern.tolist()},
        figures={"": figure},
    )


METHOD = Method(
    name="activations",
    summary="Per-neuron traces of a layer over the tokens; top neurons by variance or by correlation with a "
            "user token pattern (Karpathy's quote-cell search).",
    params=ActivationsParams,
    run=run,
    needs_head=False,
    token_scores=False,
    tensors=("states", "traces"),
)
