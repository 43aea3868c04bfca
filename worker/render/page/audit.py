"""Audit documents and their per-item attributions → what templates/audit.html draws (docs/viewer.md)."""
from __future__ import annotations

from typing import Any

import worker.render.page.views as views
from worker.render.page.palette import fmt
from worker.report import word_shares

SHOWN_ITEMS = 500  # items with a drill-down on the page; every item is in attributions.jsonl and items.csv
TOP_WORDS = 15


def attribution_line(item: dict[str, Any]) -> dict[str, Any]:
    """One line of an audit's `attributions.jsonl` (docs/api.md): an item (of one model) with its tokens, words and
    every token-scoring method's token and word scores; the page's drill-down reads the same."""
    result = item.get("result") or {}
    methods = {m: {"scores": result["methods"][m]["scores"], "word_scores": result["methods"][m]["word_scores"]}
               for m in views.token_methods(result)} if result else {}
    return {"model": item.get("model"), "position": item.get("position"), "status": item.get("status"),
            "label": item.get("label"), "input": item.get("input"), "prediction": result.get("prediction"),
            "tokens": result.get("tokens"), "special": result.get("special"), "words": result.get("words"),
            "word_strings": result.get("word_strings"), "methods": methods,
            "error": (item.get("error") or {}).get("detail")}


def _top_chart(top_words: list[dict[str, Any]]) -> dict[str, Any] | None:
    rows = [{"method": w["word"] + (" (stop word)" if w.get("stop_word") else ""), "total share": w["total_share"]}
            for w in top_words[:TOP_WORDS]]
    return views.bar_chart(rows, ["total share"]) if rows else None


def _model(name: str, agg: dict[str, Any]) -> dict[str, Any]:
    methods = []
    for m, part in (agg.get("methods") or {}).items():
        faith = part.get("faithfulness") or {}
        methods.append({"method": m, "top": _top_chart(part.get("top_words") or []),
                        "top_words": part.get("top_words") or [],
                        "stop_share": fmt(part.get("stop_word_share_top_k")),
                        "by_label": [{"label": label, "words": ", ".join(w["word"] for w in words[:8])}
                                     for label, words in (part.get("top_words_by_label") or {}).items()],
                        "faithfulness": {k: {s: fmt(v) for s, v in (spread or {}).items()}
                                         for k, spread in faith.items()}})
    faith_rows = [{"method": m, **{k: ((part.get("faithfulness") or {}).get(k) or {}).get("mean")
                                   for k in ("comprehensiveness", "sufficiency", "lift")}}
                  for m, part in (agg.get("methods") or {}).items()]
    sigma = agg.get("sigma") or {}
    entropy = views.line_chart([(layer, (part.get("sentence_entropy") or {}).get("mean"))
                                for layer, part in sigma.items()], "mean sentence entropy per layer") if sigma else None
    information = views.line_chart([(layer, (part.get("word_information") or {}).get("mean"))
                                    for layer, part in sigma.items()], "mean word information per layer") \
        if sigma else None
    return {"model": name, "n_items": agg.get("items"), "accuracy": fmt(agg.get("accuracy")) if "accuracy" in agg
            else None, "methods": methods,
            "faithfulness_chart": views.bar_chart(faith_rows, ["comprehensiveness", "sufficiency", "lift"]),
            "agreement": [{"pair": k, "rho": fmt(v)} for k, v in (agg.get("agreement") or {}).items()],
            "sigma": [c for c in (information, entropy) if c]}


def _item(line: dict[str, Any], first: str | None) -> dict[str, Any]:
    text = " ||| ".join(str(v) for k, v in (line.get("input") or {}).items() if k in ("text", "premise", "hypothesis"))
    methods: dict[str, Any] = line.get("methods") or {}
    words: list[str] = line.get("word_strings") or []
    result = {"tokens": line.get("tokens") or [], "special": line.get("special") or [], "words": line.get("words"),
              "word_strings": words, "methods": methods}
    top = ""
    if first and first in methods:  # as in items.csv: the real words with the largest shares
        top = " ".join(w for w, _ in sorted(word_shares(result, first), key=lambda ws: -ws[1])[:5])
    prediction = line.get("prediction") or {}
    return {"model": line.get("model"), "position": line.get("position"), "status": line.get("status"),
            "label": line.get("label"), "prediction": prediction.get("label"), "text": text, "top": top,
            "error": line.get("error"), "methods": views.method_views(result) if result["tokens"] else []}


def audit(document: dict[str, Any], items: list[dict[str, Any]], artifact_url: views.ArtifactUrl | None
          ) -> dict[str, Any]:
    items = [attribution_line(i) if "result" in i else i for i in items]  # item rows or attributions.jsonl lines
    aggregates = document.get("aggregates") or {}
    methods = list(document.get("methods") or (document.get("request") or {}).get("methods") or [])
    first = next((m for m in methods if any(m in (i.get("methods") or {}) for i in items)), None)
    counts = document.get("counts") or {}
    return {"id": document.get("id"), "status": document.get("status"), "models": document.get("models") or [],
            "methods": methods, "counts": counts, "progress": fmt(document.get("progress")),
            "rate": fmt(document.get("items_per_second")), "eta": fmt(document.get("eta_seconds")),
            "error": document.get("error"),
            # said on the page where faithfulness would be, so its absence reads as asked for, not as missing
            "faithfulness_level": (document.get("request") or {}).get("faithfulness", "full"),
            "per_model": [_model(n, a) for n, a in (aggregates.get("models") or {}).items()],
            "model_agreement": [{"pair": k, "rho": fmt(v)} for k, v in (aggregates.get("model_agreement") or {}).items()],
            "first": first, "rows": [_item(i, first) for i in items[:SHOWN_ITEMS]], "total_items": len(items),
            "artifacts": views.artifacts(document, artifact_url),
            "data": {"id": document.get("id"), "counts": counts, "items": len(items)}}
