"""Result documents → what the templates draw: every number and colour class is decided here, so the templates
only lay them out and escape them (docs/viewer.md, "Job view")."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from worker.render.page.palette import Scale, fmt
from worker.report import spearman

ArtifactUrl = Callable[[str], str]
# Matrices are SVG cells (about 110 bytes each, with the hover title): larger ones are left to the PNG figures, and
# a transformer's layers are drawn while they fit one budget, so the page stays light.
MATRIX_CELLS = 64 * 64
ATTENTION_CELLS = 2 * 64 * 64


def shaded(texts: Sequence[str], values: Sequence[float | None], special: Sequence[bool] = ()) -> dict[str, Any]:
    """A run of texts shaded by their values on one scale, with its legend."""
    scale = Scale([v for v, s in zip(values, _pad(special, len(values)), strict=True) if not s])
    cells = [{"text": t, "value": fmt(v), "cls": scale.level(v), "special": s}
             for t, v, s in zip(texts, values, _pad(special, len(values)), strict=True)]
    return {"cells": cells, "signed": scale.signed, "legend": scale.legend()}


def _pad(flags: Sequence[bool], n: int) -> list[bool]:
    return [bool(f) for f in flags][:n] + [False] * max(0, n - len(flags))


def word_special(result: dict[str, Any]) -> list[bool]:
    """A word is special when every token of it is (a [CLS] word, an ESIM separator)."""
    special = result.get("special") or []
    return [bool(group) and all(special[t] for t in group if t < len(special))
            for group in result.get("words") or []]


def is_token_scoring(part: Any, result: dict[str, Any]) -> bool:
    return (isinstance(part, dict) and isinstance(part.get("scores"), list)
            and len(part["scores"]) == len(result.get("tokens") or []) and isinstance(part.get("word_scores"), list))


def token_methods(result: dict[str, Any]) -> list[str]:
    return [m for m, part in (result.get("methods") or {}).items() if is_token_scoring(part, result)]


def faithfulness_rows(result: dict[str, Any], methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    for m in methods:
        f = result["methods"][m].get("faithfulness")
        if isinstance(f, dict):
            rnd, norm = f.get("random") or {}, f.get("normalized") or {}
            rows.append({"method": m, "comprehensiveness": f.get("comprehensiveness"),
                         "sufficiency": f.get("sufficiency"), "random": rnd.get("comprehensiveness"),
                         "random_sufficiency": rnd.get("sufficiency"), "lift": f.get("lift"),
                         "normalized_comprehensiveness": norm.get("comprehensiveness"),
                         "normalized_sufficiency": norm.get("sufficiency"),
                         "searched": isinstance(f.get("normalized"), dict)})  # null: faithfulness "basic"
    return rows


def bar_chart(rows: list[dict[str, Any]], series: list[str], label: str = "method") -> dict[str, Any] | None:
    """A grouped horizontal bar chart (inline SVG) of `series` per row; bars start at 0 and may go negative."""
    values = [r[s] for r in rows for s in series if isinstance(r.get(s), (int, float)) and math.isfinite(r[s])]
    if not values:
        return None
    low, high = min(0.0, *values), max(0.0, *values)
    span = (high - low) or 1.0
    left, width, bar, gap = 150, 320, 11, 10
    group = bar * len(series) + gap
    zero = left + width * (0 - low) / span
    bars = []
    for i, row in enumerate(rows):
        for j, s in enumerate(series):
            v = row.get(s)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            x = left + width * (min(v, 0) - low) / span
            bars.append({"x": round(x, 1), "y": 20 + i * group + j * bar, "w": round(max(width * abs(v) / span, 1), 1),
                         "h": bar - 2, "series": j, "name": s, "row": row[label], "value": fmt(v), "raw": v})
    return {"rows": [{"label": r[label], "y": 20 + i * group + bar * len(series) / 2} for i, r in enumerate(rows)],
            "bars": bars, "series": series, "zero": round(zero, 1), "low": fmt(low), "high": fmt(high),
            "left": left, "right": left + width, "height": 30 + len(rows) * group, "width": left + width + 20}


def agreement(result: dict[str, Any], methods: list[str]) -> list[dict[str, Any]]:
    """Spearman ρ of the word scores between every two methods (real words only)."""
    keep = [i for i, s in enumerate(word_special(result)) if not s]
    out = []
    for n, a in enumerate(methods):
        for b in methods[n + 1:]:
            sa, sb = (result["methods"][m]["word_scores"] for m in (a, b))
            rho = spearman([sa[i] for i in keep], [sb[i] for i in keep])
            out.append({"a": a, "b": b, "rho": fmt(rho), "raw": rho})
    return out


def word_table(result: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Words × methods: every word's raw score per method (unshaded: the colours are in the texts above, and a
    512-word table of shaded cells would double the page)."""
    words, special = result.get("word_strings") or [], word_special(result)
    columns = [[{"value": fmt(v), "raw": v} for v in result["methods"][m]["word_scores"]] for m in methods]
    rows = [{"word": w, "special": special[i] if i < len(special) else False,
             "cells": [col[i] for col in columns]} for i, w in enumerate(words)]
    return {"methods": methods, "rows": rows}


def line_chart(points: list[tuple[str, float | None]], title: str) -> dict[str, Any] | None:
    """A small line chart over named x positions (sigma's sentence entropy per layer); a missing value is a gap in
    the dots (the line joins the others)."""
    known = [(i, x, y) for i, (x, y) in enumerate(points) if isinstance(y, (int, float)) and math.isfinite(y)]
    if not known:
        return None
    low, high = min(y for _, _, y in known), max(y for _, _, y in known)
    span = (high - low) or 1.0
    left, width, top, height = 60, max(60 * (len(points) - 1), 60), 14, 120
    step = width / max(len(points) - 1, 1)
    dots = [{"x": round(left + i * step, 1), "y": round(top + height * (high - y) / span, 1), "label": x,
             "value": fmt(y)} for i, x, y in known]
    return {"dots": dots, "path": " ".join(f"{d['x']},{d['y']}" for d in dots), "title": title,
            "low": fmt(low), "high": fmt(high), "left": left, "top": top, "bottom": top + height,
            "width": left + width + 40, "height": top + height + 64}


def matrix(values: list[list[float | None]], rows: Sequence[str], cols: Sequence[str],
           per_row: bool = False) -> dict[str, Any] | None:
    """A heat map as SVG cells with a <title> each (hover), or None when too large to draw inline. `per_row`: each
    row coloured on its own scale (the legend then spans ±1 of the row's largest |value|); None cells are blank."""
    if not values or not values[0] or len(values) * len(values[0]) > MATRIX_CELLS:
        return None
    cell = max(8, min(26, 480 // max(len(values), len(values[0]))))  # small matrices readable, large ones fit
    colours = values
    if per_row:
        colours = [[None if v is None or not top else v / top for v in row]
                   for row in values for top in [max((abs(v) for v in row if v is not None), default=0.0)]]
    scale = Scale([v for row in colours for v in row])
    left, top = 8 + 7 * max((len(r) for r in rows), default=1), 8 + 7 * max((len(c) for c in cols), default=1)
    left, top = min(left, 160), min(top, 160)
    cells = [{"x": left + j * cell, "y": top + i * cell, "fill": "#ffffff" if v is None else scale.colour(c),
              "tip": f"{rows[i] if i < len(rows) else i} → {cols[j] if j < len(cols) else j}: {fmt(v)}"}
             for i, (row, shade) in enumerate(zip(values, colours, strict=True))
             for j, (v, c) in enumerate(zip(row, shade, strict=True))]
    return {"cells": cells, "cell": cell, "left": left, "top": top,
            "rows": [{"label": r, "y": top + i * cell + cell * 0.7} for i, r in enumerate(rows)],
            "cols": [{"label": c, "x": left + j * cell + cell * 0.7} for j, c in enumerate(cols)],
            "width": left + cell * len(values[0]) + 8, "height": top + cell * len(values) + 8,
            "legend": scale.legend(), "signed": scale.signed, "per_row": per_row}


def sigma_view(part: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
    """Information per word per layer as small multiples (one shaded sentence per layer, one scale for all layers
    so they compare) and the sentence entropy per layer (Guan et al. Fig. 3/7)."""
    layers = part.get("layers")
    if not isinstance(layers, dict) or not layers:
        return None
    information = _multiples(result, {name: layer.get("word_scores") or [] for name, layer in layers.items()})
    entropy = line_chart([(name, layer.get("sentence_entropy")) for name, layer in layers.items()],
                         "sentence entropy per layer")
    concepts = list(next(iter(layers.values())).get("r") or {})
    return {**information, "entropy": entropy,
            "concepts": [{"concept": c, **_multiples(result, {name: (layer.get("r") or {}).get(c) or []
                                                             for name, layer in layers.items()})}
                         for c in concepts]}


def _multiples(result: dict[str, Any], per_layer: dict[str, list[float | None]]) -> dict[str, Any]:
    """One shaded sentence per layer, every layer on one scale (so that the layers compare)."""
    words, special = result.get("word_strings") or [], word_special(result)
    scale = Scale([v for values in per_layer.values() for v, s in zip(values, special, strict=False) if not s])
    multiples = [{"layer": name, "cells": [{"text": w, "value": fmt(v), "cls": scale.level(v),
                                            "special": special[i] if i < len(special) else False}
                                           for i, (w, v) in enumerate(zip(words, values, strict=False))]}
                 for name, values in per_layer.items()]
    return {"multiples": multiples, "legend": scale.legend(), "signed": scale.signed}


def attention_view(part: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
    view = part.get("view")
    if view == "transformer" and part.get("head_average"):
        tokens = result.get("tokens") or []
        names = part.get("layers") or [str(i + 1) for i in range(len(part["head_average"]))]
        fit = ATTENTION_CELLS // max(len(tokens) ** 2, 1)  # how many layers the budget draws
        layers = [{"layer": n, "matrix": matrix(m, tokens, tokens) if i < fit else None}
                  for i, (n, m) in enumerate(zip(names, part["head_average"], strict=False))]
        return {"kind": "transformer", "layers": layers, "heads": part.get("heads")}
    if view == "esim":
        p, h = labels(part, "premise"), labels(part, "hypothesis")
        return {"kind": "esim", "maps": [
            # both n×m, premise words as rows: each premise word's weights over the hypothesis (rows sum to 1),
            # and each hypothesis word's over the premise (columns sum to 1)
            {"title": "premise → hypothesis (rows sum to 1)",
             "matrix": matrix(part.get("premise_to_hypothesis") or [], p, h)},
            {"title": "hypothesis → premise (columns sum to 1)",
             "matrix": matrix(part.get("hypothesis_to_premise") or [], p, h)}]}
    if view == "lm" and part.get("history"):
        tokens = part.get("tokens") or []
        return {"kind": "lm", "maps": [{"title": "attention over the history", "matrix":
                                        matrix(part["history"], tokens, tokens)}]}
    return None


def labels(part: dict[str, Any], side: str) -> list[str]:
    """An ESIM part's words of one side (`premise`, `hypothesis`: their texts; `*_tokens` are token indices)."""
    return [str(w) for w in part.get(side) or []]


def esim_view(part: dict[str, Any]) -> dict[str, Any] | None:
    """attention_saliency: alignment and saliency side by side."""
    p, h = labels(part, "premise"), labels(part, "hypothesis")
    att = part.get("attention") or {}
    maps = [{"title": "alignment premise → hypothesis", "matrix": matrix(att.get("premise_to_hypothesis") or [], p, h)},
            {"title": "saliency", "matrix": matrix(part.get("saliency") or [], p, h)}]
    return {"maps": [m for m in maps if m["matrix"]], "top": part.get("top") or []}


def gating_view(part: dict[str, Any]) -> dict[str, Any] | None:
    """Gate signals per gate and direction: one shaded row of tokens per gate, premise then hypothesis."""
    gates = part.get("gates")
    if not isinstance(gates, dict) or not gates:
        return None
    tokens = labels(part, "premise") + labels(part, "hypothesis")
    rows = []
    for name, gate in gates.items():
        values = gate.get("signal") or []
        texts = tokens if len(tokens) == len(values) else [str(i) for i in range(len(values))]
        rows.append({"gate": name, **shaded(texts, values)})
    return {"rows": rows}


def method_views(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per token-scoring method: words and tokens shaded, each on its own scale."""
    tokens, special = result.get("tokens") or [], result.get("special") or []
    words, wspecial = result.get("word_strings") or [], word_special(result)
    out = []
    for m in token_methods(result):
        part = result["methods"][m]
        out.append({"method": m, "words": shaded(words, part["word_scores"], wspecial),
                    "tokens": shaded(tokens, part["scores"], special),
                    "params": part.get("params") or {}})
    return out


def single(result: dict[str, Any]) -> dict[str, Any]:
    """The view of one result document (a job's, a compared model's, an audit item's or a batch item's)."""
    methods = token_methods(result)
    parts = result.get("methods") or {}
    prediction = result.get("prediction") or None
    probs = sorted((prediction or {}).get("probabilities", {}).items(), key=lambda kv: -kv[1])
    others = []
    generation = result.get("kind") == "generation"
    for m, part in parts.items():
        if m in methods or not isinstance(part, dict) or (generation and "scores" in part):
            continue  # a generation's step methods are its steps × tokens maps; sigma, activations show here
        if m == "sigma":
            view = sigma_view(part, result)
        elif m == "attention":
            view = attention_view(part, result)
        elif m == "attention_saliency":
            view = esim_view(part)
        elif m == "gating":
            view = gating_view(part)
        else:
            view = None
        others.append({"method": m, "kind": m if view else "other", "view": view})
    faith = faithfulness_rows(result, methods)
    return {
        "model": (result.get("model") or {}).get("name"),
        "prediction": prediction, "target": result.get("target"), "score": result.get("score"),
        "probabilities": [{"label": k, "p": fmt(v), "raw": v, "pct": round(100 * v, 1)} for k, v in probs],
        "methods": method_views(result), "others": others,
        "table": word_table(result, methods) if methods else None,
        "agreement": agreement(result, methods),
        "faithfulness": faith,
        "faithfulness_searched": any(f["searched"] for f in faith),  # else no normalised columns
        "faithfulness_chart": bar_chart(faith, ["comprehensiveness", "sufficiency", "random", "lift"]),
        "generation": generation_view(result) if generation else None,
    }


def generation_view(result: dict[str, Any]) -> dict[str, Any] | None:
    """A generation result (issue 19): the prompt and the generated tokens with their probabilities, and per method
    the steps × tokens heat map of its S×T `scores` (each row on its own scale, as in the method's figure; a cell
    the step does not read is blank)."""
    generation = result.get("generation") or {}
    generated = [str(t) for t in generation.get("tokens") or []]
    tokens, prompt = [str(t) for t in result.get("tokens") or []], int(result.get("prompt_length") or 0)
    steps = [f"{s}: {t}" for s, t in enumerate(generated)]
    maps = []
    for m, part in (result.get("methods") or {}).items():
        scores = part.get("scores") if isinstance(part, dict) else None
        if isinstance(scores, list) and scores and isinstance(scores[0], list):
            labels_ = steps if len(steps) == len(scores) else [str(s) for s in range(len(scores))]
            maps.append({"title": m, "matrix": matrix(scores, labels_, tokens, per_row=True)})
    probabilities = [{"step": s, "token": t, "p": fmt(p)}
                     for s, (t, p) in enumerate(zip(generated, generation.get("probabilities") or [], strict=False))]
    return {"prompt": "".join(tokens[:prompt]), "generated": generated, "probabilities": probabilities,
            "maps": maps}


def artifacts(document: dict[str, Any], artifact_url: ArtifactUrl | None) -> list[dict[str, Any]]:
    return [{"name": a["name"], "url": artifact_url(a["name"]) if artifact_url else "./" + quote(a["name"]),
             "bytes": a.get("bytes"), "content_type": a.get("content_type")}
            for a in document.get("artifacts") or [] if isinstance(a, dict) and a.get("name")]


def results_of(document: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the job's own results: one, or a batch's items; the compared models' results), in page order."""
    result = document.get("result")
    own: list[Any] = []
    if isinstance(result, dict):
        own = list(result.get("items") or []) if result.get("kind") == "batch" else [result]
    compare = list((document.get("compare") or {}).values())
    return [r for r in own if isinstance(r, dict)], [r for r in compare if isinstance(r, dict)]


def job(document: dict[str, Any], artifact_url: ArtifactUrl | None) -> dict[str, Any]:
    """The job document's view: its result (single, batch or generation), the compared models, its artifacts."""
    own, compare = results_of(document)
    level = (document.get("request") or {}).get("faithfulness", "full")  # what the note on faithfulness says
    views = [{**single(r), "index": n, "faithfulness_level": level} for n, r in enumerate(own + compare)]
    inputs = (document.get("request") or {}).get("inputs") or {}
    if isinstance(inputs, list):  # a batch: each item's own input beside it, none in the header
        for view, one in zip(views, inputs, strict=False):
            view["input"] = " / ".join(str(v) for v in one.values()) if isinstance(one, dict) else str(one)
        inputs = {}
    result = document.get("result") or {}
    model = document.get("model") or result.get("model") or {}
    return {"id": document.get("id"), "status": document.get("status") or ("succeeded" if own else None),
            "model": model.get("name") if isinstance(model, dict) else model,
            "batch": result.get("kind") == "batch",
            "inputs": inputs, "error": document.get("error"),
            "results": views[:len(own)], "compare": views[len(own):], "artifacts": artifacts(document, artifact_url),
            "model_agreement": [{"pair": k, "rho": fmt(v)} for k, v in (document.get("model_agreement") or {}).items()]}


def script_data(document: dict[str, Any]) -> dict[str, Any]:
    """What viewer.js reads for the hover and focus values (and a test compares with the DOM): per result, in the
    order of the views' `data-r`, each token-scoring method's word and token scores (4 significant digits:
    the page shows 3)."""
    own, compare = results_of(document)
    return {"results": [{"model": (r.get("model") or {}).get("name"), "prediction": r.get("prediction"),
                         "methods": {m: {"word_scores": _short(r["methods"][m]["word_scores"]),
                                         "scores": _short(r["methods"][m]["scores"])} for m in token_methods(r)}}
                        for r in own + compare]}


def _short(values: list[float | None]) -> list[float | None]:
    return [float(f"{v:.4g}") if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]
