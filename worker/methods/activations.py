"""`activations`: per-neuron traces of one layer over the input's tokens, and the neurons worth looking at (Karpathy
et al. 2015, "Visualizing and understanding recurrent networks": the "quote cell" search).

For a per-token layer (``layer``; default: the deepest per-token layer, e.g. ``layer.6`` or ``lstm.2``) the states
h (T×H) are read in one forward pass. Neurons are ranked over the non-special tokens by

- ``rank_by="variance"``: the variance of h[:, j] over the tokens (the most active neurons), or
- ``rank_by="correlation"``: |Pearson correlation| between h[:, j] and a user pattern over the tokens. The pattern is
  ``pattern`` (one number per word, e.g. 1 inside quotes and 0 elsewhere; a word's value goes to all its tokens) or
  ``pattern_regex`` (a regular expression on the text: a word is 1 where its characters overlap a match, else 0;
  ``"[^"]*"`` marks quoted spans). Patterns run on RE2, in time linear in the text: a pattern cannot stall a worker
  however it backtracks in other engines, and what RE2 cannot run (backreferences, lookaround) is refused.

The ``top`` neurons' traces are returned (signed correlation kept). No target is needed: headless models run it.

JSON: ``{"layer", "rank_by", "neurons": [top indices], "traces": top×T, "variance": [per top neuron],
"correlation": [per top neuron] | null, "pattern": [per token] | null}``. Tensors: ``states`` (T×H), ``traces``
(top×T). Figure: the traces, neurons × words.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import re2
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


NO_PATTERN = "rank_by=correlation needs pattern (one number per word) or pattern_regex"


def per_token_layers(adapter: Adapter) -> list[str]:
    return [n for n in adapter.layer_names if n not in ("pool", "output")]


def chosen_layer(adapter: Adapter, params: dict[str, Any]) -> str:
    allowed = per_token_layers(adapter)
    layer = params.get("layer") or allowed[-1]
    if layer not in allowed:
        raise InputError(f"activations need a per-token layer, one of {allowed}; got {layer!r}")
    return layer


def compile_pattern(pattern: str) -> re2._Regexp:
    """A user's pattern compiled by RE2 (linear time, no backtracking), or an InputError saying why not."""
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the user's error, not a line in the worker's log
    try:
        return re2.compile(pattern, options)
    except re2.error as err:
        why = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        raise InputError(f"pattern_regex cannot be used: {why} (patterns run on RE2: no backreferences, "
                         "lookahead or lookbehind)") from None


def check(adapter: Adapter, params: dict[str, Any]) -> None:
    """What the API checks at submit too: the layer exists and is per token, the pattern compiles."""
    chosen_layer(adapter, params)
    if params.get("pattern_regex") is not None:
        compile_pattern(params["pattern_regex"])
    if params.get("rank_by") == "correlation" and params.get("pattern") is None \
            and params.get("pattern_regex") is None:
        raise InputError(NO_PATTERN)


def token_pattern(encoding: Encoding, params: dict[str, Any]) -> torch.Tensor:
    """The user's pattern as one value per token of item 0 (module docstring)."""
    words = encoding.words[0]
    if params.get("pattern") is not None:
        values = params["pattern"]
        if len(values) != len(words):
            raise InputError(f"pattern has {len(values)} values; the input has {len(words)} words "
                             "(specials included, as in the result's word_strings)")
    elif params.get("pattern_regex") is not None:
        expression = compile_pattern(params["pattern_regex"])
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
        raise InputError(NO_PATTERN)
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
    layer = chosen_layer(adapter, params)
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
    token_scores=False,
    tensors=("states", "traces"),
    check=check,
)
