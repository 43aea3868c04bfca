"""Audit aggregates and the report built on them. Pure functions of the per-item results, so a test can recompute
every number from the items (docs/api.md): top words (Guan Fig. 6) with a stop-word share, faithfulness
distributions, agreement between methods (and between models on the same items), accuracy against gold labels,
information per layer for sigma."""
from __future__ import annotations

import csv
import heapq
import io
import itertools
import math
import statistics
from collections import defaultdict
from typing import Any

STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves 's 're n't 've 'll 'd""".split())
TOP_WORDS = 20


def _is_word(word: str) -> bool:
    return any(ch.isalnum() for ch in word)


def _spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))]

    return {"n": len(values), "mean": statistics.fmean(values), "std": statistics.pstdev(values),
            "p10": q(0.1), "median": q(0.5), "p90": q(0.9)}


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when undefined."""
    if len(a) != len(b) or len(a) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else None


def word_shares(result: dict[str, Any], method: str) -> list[tuple[str, float]]:
    """(lower-cased word, share of the item's total |score|) for the item's real words (specials and punctuation
    left out)."""
    words = result.get("word_strings") or []
    scores = result["methods"][method].get("word_scores") or []
    special = result.get("special") or []
    groups = result.get("words") or [[] for _ in words]
    pairs = [(w.lower(), abs(s)) for w, s, g in zip(words, scores, groups, strict=False)
             if _is_word(w) and not (g and all(special[t] for t in g if t < len(special)))]
    total = sum(s for _, s in pairs)
    return [(w, s / total) for w, s in pairs] if total > 0 else []


Tally = dict[str, list[float]]  # word -> [summed share, occurrences]


def tally(table: Tally, shares: list[tuple[str, float]]) -> Tally:
    for word, share in shares:
        entry = table.setdefault(word, [0.0, 0])
        entry[0] += share
        entry[1] += 1
    return table


def ranked_words(table: Tally) -> list[dict[str, Any]]:
    ranked = heapq.nsmallest(TOP_WORDS, table, key=lambda w: (-table[w][0], w))  # sorted; no full sort per fold
    return [{"word": w, "total_share": table[w][0], "mean_share": table[w][0] / table[w][1],
             "count": int(table[w][1]), "stop_word": w in STOP_WORDS} for w in ranked]


def top_words(results: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """Words ranked by their summed share of attribution over the corpus (frequent and important)."""
    table: Tally = {}
    for result in results:
        tally(table, word_shares(result, method))
    return ranked_words(table)


def stop_word_share(results: list[dict[str, Any]], method: str, k: int) -> float | None:
    """Mean over items of the fraction of the item's top-k words that are stop words."""
    shares = [share for result in results if (share := item_stop_share(result, method, k)) is not None]
    return statistics.fmean(shares) if shares else None


def item_stop_share(result: dict[str, Any], method: str, k: int) -> float | None:
    """The fraction of the item's top-k words that are stop words (None for an item without real words)."""
    ranked = sorted(word_shares(result, method), key=lambda ws: -ws[1])[:k]
    return sum(w in STOP_WORDS for w, _ in ranked) / len(ranked) if ranked else None


def method_agreement(results: list[dict[str, Any]], methods: list[str]) -> dict[str, float | None]:
    out = {}
    for a, b in itertools.combinations(methods, 2):
        rhos = [rho for r in results
                if (rho := spearman(r["methods"][a]["word_scores"], r["methods"][b]["word_scores"])) is not None]
        out[f"{a}~{b}"] = statistics.fmean(rhos) if rhos else None
    return out


def scoring_methods(results: list[dict[str, Any]], methods: list[str]) -> list[str]:
    return [m for m in methods if results and all("word_scores" in r["methods"].get(m, {}) for r in results)]


def sigma_layers(results: list[dict[str, Any]], concepts: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Per layer: spread of word information (−log σ/bound) and of sentence entropy (Guan Fig. 3/7); corpus-level
    information (Eq. 1–2: worker.sigma.analysis.corpus_information over the items' token σ, for the items that state
    ``bound`` and ``embedding_size``); and for each concept c the spread of r_{i,c} over the corpus's words (Eq. 8–9,
    Fig. 8), from the items' per-word ``r`` (the sigma method's ``concepts`` param)."""
    import torch

    from worker.sigma.analysis import corpus_information

    info: dict[str, list[float]] = defaultdict(list)
    entropy: dict[str, list[float]] = defaultdict(list)
    sigmas: dict[tuple[str, int, float], list[Any]] = defaultdict(list)
    r: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        sigma = result["methods"]["sigma"]
        for layer, part in sigma["layers"].items():
            info[layer] += [s for s in part.get("word_scores", part["scores"]) if s is not None]
            if part.get("sentence_entropy") is not None:
                entropy[layer].append(part["sentence_entropy"])
            if sigma.get("bound") is not None and sigma.get("embedding_size") is not None:
                values = [math.nan if v is None else v for v in part["sigma"]]
                sigmas[(layer, int(sigma["embedding_size"]), float(sigma["bound"]))].append(
                    torch.tensor(values, dtype=torch.float64))
            for c in concepts:
                r[layer][c] += [v for v in (part.get("r") or {}).get(c, []) if v is not None]
    out: dict[str, dict[str, Any]] = {
        layer: {"word_information": _spread(info[layer]), "sentence_entropy": _spread(entropy[layer])}
        for layer in info}
    for (layer, k, bound), values in sigmas.items():
        if len(values) == len(results):  # one k and bound for every item (one model): the corpus estimate
            out[layer]["corpus_information"] = corpus_information(values, k, bound)
    for layer in out:
        if concepts:
            out[layer]["r"] = {c: _spread(r[layer][c]) for c in concepts}
    return out


def aggregate_model(results: list[dict[str, Any]], request: dict[str, Any]) -> dict[str, Any]:
    methods = list(request["methods"])
    k = int(request.get("top_k", 3))
    scoring = scoring_methods(results, methods)
    out: dict[str, Any] = {"items": len(results), "methods": {}}
    labelled = [r for r in results if r.get("label") and r.get("prediction")]
    if labelled:
        out["accuracy"] = statistics.fmean(r["prediction"]["label"] == r["label"] for r in labelled)
    for m in scoring:
        part: dict[str, Any] = {"top_words": top_words(results, m), "stop_word_share_top_k": stop_word_share(
            results, m, k)}
        by_label: dict[str, list] = defaultdict(list)
        for r in results:
            key = r.get("label") or (r.get("prediction") or {}).get("label")
            if key:
                by_label[key].append(r)
        part["top_words_by_label"] = {label: top_words(rs, m)[:10] for label, rs in sorted(by_label.items())}
        faith = [r["methods"][m].get("faithfulness") for r in results if r["methods"][m].get("faithfulness")]
        if faith:
            part["faithfulness"] = {key: _spread([f[key] for f in faith])
                                    for key in ("comprehensiveness", "sufficiency", "lift")}
        out["methods"][m] = part
    if len(scoring) > 1:
        out["agreement"] = method_agreement(results, scoring)
    if "sigma" in methods and results and all("sigma" in r["methods"] for r in results):
        out["sigma"] = sigma_layers(results, list(request.get("concepts") or ()))
    return out


def aggregate(items: list[dict[str, Any]], request: dict[str, Any]) -> dict[str, Any]:
    """Aggregates per model over the items that succeeded, plus cross-model agreement in comparison mode."""
    per_model = results_by_model(items)
    out = {"models": {m: aggregate_model(per_model.get(m, []), request) for m in request["models"]}}
    if len(request["models"]) > 1:
        out["model_agreement"] = model_agreement(per_model, request)
    return out


def results_by_model(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The results of the items that succeeded, each with its label and position, per model."""
    per_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        if item["status"] == "done" and item.get("result"):
            per_model[item["model"]].append({**item["result"], "label": item.get("label"),
                                             "position": item["position"]})
    return per_model


def model_agreement(per_model: dict[str, list[dict[str, Any]]], request: dict[str, Any]) -> dict[str, Any]:
    """Mean Spearman of word scores for the same item under two models (items whose words are the same)."""
    out = {}
    for a, b in itertools.combinations(request["models"], 2):
        by_pos = {r["position"]: r for r in per_model.get(b, [])}
        for m in scoring_methods(per_model.get(a, []) + per_model.get(b, []), request["methods"]):
            rhos = [rho for ra in per_model.get(a, []) if (rho := pair_rho(ra, by_pos.get(ra["position"]), m))
                    is not None]
            out[f"{a}~{b}:{m}"] = statistics.fmean(rhos) if rhos else None
    return out


def pair_rho(a: dict[str, Any], b: dict[str, Any] | None, method: str) -> float | None:
    """Spearman of one item's word scores under two models: over their words when both read the item as the same
    words, else over the spans of text on which their words agree (`aligned_word_scores`: models with different
    tokenisers); None when their words do not spell the same text."""
    if not b:
        return None
    if a.get("word_strings") == b.get("word_strings"):
        return spearman(a["methods"][method]["word_scores"], b["methods"][method]["word_scores"])
    aligned = aligned_word_scores(a, b, method)
    return None if aligned is None else spearman(*aligned)


def _text_words(result: dict[str, Any], method: str) -> list[tuple[str, float]]:
    """The non-special words of a result document (whitespace removed, case folded) with their scores."""
    special, words = result.get("special"), result.get("words")
    pairs = []
    for w, (text, score) in enumerate(zip(result["word_strings"], result["methods"][method]["word_scores"],
                                          strict=True)):
        if special is not None and words is not None and all(special[t] for t in words[w]):
            continue
        pairs.append(("".join(text.split()).casefold(), float(score)))
    return pairs


def aligned_word_scores(a: dict[str, Any], b: dict[str, Any], method: str) -> tuple[list[float], list[float]] | None:
    """The word scores of two models' results for the same text, summed over the smallest spans on which both
    models' word boundaries agree ("isn't" = one model's "isn" "'" "t" = the other's "is" "n't"), specials left out;
    None when the words of the two do not spell the same text."""
    sides = [_text_words(r, method) for r in (a, b)]
    if "".join(w for w, _ in sides[0]) != "".join(w for w, _ in sides[1]):
        return None
    cuts = [set(itertools.accumulate(len(w) for w, _ in side)) for side in sides]
    common = cuts[0] & cuts[1]
    out: tuple[list[float], list[float]] = ([], [])
    for side, spans in zip(sides, out, strict=True):
        position, total = 0, 0.0
        for word, score in side:
            position, total = position + len(word), total + score
            if position in common:
                spans.append(total)
                total = 0.0
    return out


def job_model_agreement(results: dict[str, dict[str, Any]], methods: list[str]) -> dict[str, float | None]:
    """A compare_with job's agreement between models: {"<a>~<b>:<method>": Spearman of the word scores} for each
    pair of models (in the job's order) and each method both scored words with."""
    out = {}
    for (a, ra), (b, rb) in itertools.combinations(results.items(), 2):
        for m in methods:
            if "word_scores" in ra["methods"].get(m, {}) and "word_scores" in rb["methods"].get(m, {}):
                out[f"{a}~{b}:{m}"] = pair_rho(ra, rb, m)
    return out


# --- aggregates so far: running sums, folded per finished batch ------------------------------------------
# While an audit runs, each finished micro-batch adds its items to running sums kept on the audit row, and the
# aggregates so far are derived from them: one batch of work per batch, not a pass over every item per read. They
# are the numbers `aggregate` gives over the items done so far, except sigma's (its corpus information needs every
# item's σ at once): that section appears with the final aggregates, which the finaliser computes from the items.

FAITHFULNESS = ("comprehensiveness", "sufficiency", "lift")
Sum = list[float]  # [sum, n]


def running_state(request: dict[str, Any]) -> dict[str, Any]:
    """The sums of an audit that no batch has added to yet."""
    def method() -> dict[str, Any]:
        return {"unscored": False, "words": {}, "by_label": {}, "stop": [0.0, 0],
                "faithfulness": {key: [] for key in FAITHFULNESS}}

    return {"batches": [], "model_agreement": {},
            "models": {model: {"items": 0, "labelled": 0, "correct": 0, "agreement": {},
                               "methods": {m: method() for m in request["methods"]}}
                       for model in request["models"]}}


def is_folded(state: dict[str, Any], model: str, batch: int) -> bool:
    return f"{model}/{batch}" in state["batches"]


def fold_batch(state: dict[str, Any], request: dict[str, Any], model: str, batch: int,
               results: list[dict[str, Any]], partners: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Add one finished batch (its items that succeeded, as `results_by_model` gives them) to the sums, in place.
    `partners`: the same batch of each other model that is folded already (the same positions), for the agreement
    between models; whichever of two models' batches is folded second adds their pairs."""
    own = state["models"][model]
    k = int(request.get("top_k", 3))
    for result in results:
        _fold_item(own, result, list(request["methods"]), k)
    for other, theirs in partners.items():
        _fold_pairs(state["model_agreement"], request, model, results, other, theirs)
    state["batches"].append(f"{model}/{batch}")
    return state


def _fold_item(own: dict[str, Any], result: dict[str, Any], methods: list[str], k: int) -> None:
    own["items"] += 1
    prediction = (result.get("prediction") or {}).get("label")
    if result.get("label") and result.get("prediction"):
        own["labelled"] += 1
        own["correct"] += prediction == result["label"]
    label = result.get("label") or prediction
    scored = [m for m in methods if "word_scores" in result["methods"].get(m, {})]
    for m in methods:
        part = own["methods"][m]
        if m not in scored:
            part["unscored"] = True
            continue
        shares = word_shares(result, m)
        tally(part["words"], shares)
        if label:
            tally(part["by_label"].setdefault(label, {}), shares)
        _add(part["stop"], item_stop_share(result, m, k))
        faith = result["methods"][m].get("faithfulness")
        if faith:
            for key in FAITHFULNESS:
                part["faithfulness"][key].append(_finite(faith.get(key)))
    for a, b in itertools.combinations(scored, 2):
        rho = spearman(result["methods"][a]["word_scores"], result["methods"][b]["word_scores"])
        _add(own["agreement"].setdefault(f"{a}~{b}", [0.0, 0]), rho)


def _fold_pairs(sums: dict[str, Sum], request: dict[str, Any], model: str, results: list[dict[str, Any]],
                other: str, theirs: list[dict[str, Any]]) -> None:
    order = list(request["models"])
    a, b = (model, other) if order.index(model) < order.index(other) else (other, model)
    first, second = (results, theirs) if a == model else (theirs, results)
    by_pos = {r["position"]: r for r in second}
    for m in request["methods"]:
        for ra in first:
            rb = by_pos.get(ra["position"])
            if "word_scores" in ra["methods"].get(m, {}) and rb and "word_scores" in rb["methods"].get(m, {}):
                _add(sums.setdefault(f"{a}~{b}:{m}", [0.0, 0]), pair_rho(ra, rb, m))


def running_aggregates(state: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The aggregates so far, in the shape `aggregate` gives (without sigma's section)."""
    out: dict[str, Any] = {"models": {m: _model_so_far(state["models"][m], request) for m in request["models"]}}
    if len(request["models"]) > 1:
        agreement = {}
        for a, b in itertools.combinations(request["models"], 2):
            ours, theirs = state["models"][a], state["models"][b]
            for m in request["methods"]:
                if (ours["items"] or theirs["items"]) and _scores(ours, m) and _scores(theirs, m):
                    agreement[f"{a}~{b}:{m}"] = _mean(state["model_agreement"].get(f"{a}~{b}:{m}"))
        out["model_agreement"] = agreement
    return out


def _model_so_far(own: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    scoring = [m for m in request["methods"] if own["items"] and _scores(own, m)]
    out: dict[str, Any] = {"items": own["items"], "methods": {}}
    if own["labelled"]:
        out["accuracy"] = own["correct"] / own["labelled"]
    for m in scoring:
        part = own["methods"][m]
        view: dict[str, Any] = {"top_words": ranked_words(part["words"]),
                                "stop_word_share_top_k": _mean(part["stop"]),
                                "top_words_by_label": {label: ranked_words(table)[:10]
                                                       for label, table in sorted(part["by_label"].items())}}
        if part["faithfulness"][FAITHFULNESS[0]]:
            view["faithfulness"] = {key: _spread(values) for key, values in part["faithfulness"].items()}
        out["methods"][m] = view
    if len(scoring) > 1:
        out["agreement"] = {f"{a}~{b}": _mean(own["agreement"].get(f"{a}~{b}"))
                            for a, b in itertools.combinations(scoring, 2)}
    return out


def _scores(own: dict[str, Any], method: str) -> bool:
    """Whether every item of the model folded so far has word scores for the method (the `scoring_methods` rule)."""
    return not own["methods"][method]["unscored"]


def _add(total: Sum, value: float | None) -> None:
    if value is not None and math.isfinite(value):
        total[0] += value
        total[1] += 1


def _mean(total: Sum | None) -> float | None:
    return total[0] / total[1] if total and total[1] else None


def _finite(value: Any) -> float | None:
    """NaN and infinities as None: JSON columns (PostgreSQL's) refuse them, and `_spread` leaves them out anyway."""
    return value if isinstance(value, int | float) and math.isfinite(value) else None


# --- report files ----------------------------------------------------------------------------------------


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A string cell that a spreadsheet would run as a formula is neutralised with a leading `'` (docs/api.md);
    numbers stay numbers (a negative lift is data, not a formula, and must read back as a float)."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def items_csv(items: list[dict[str, Any]], request: dict[str, Any]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    methods = list(request["methods"])
    writer.writerow(["model", "position", "status", "label", "input", "prediction", "probability", "error"]
                    + [f"{m}_top_words" for m in methods] + [f"{m}_lift" for m in methods])
    for item in items:
        result = item.get("result") or {}
        pred = result.get("prediction") or {}
        text = " ||| ".join(item["input"].get(k, "") for k in ("text", "premise", "hypothesis") if k in item["input"])
        tops, lifts = [], []
        for m in methods:
            part = (result.get("methods") or {}).get(m, {})
            ranked = sorted(word_shares(result, m), key=lambda ws: -ws[1])[:5] if "word_scores" in part else []
            tops.append(" ".join(w for w, _ in ranked))
            lifts.append((part.get("faithfulness") or {}).get("lift"))
        row = [item["model"], item["position"], item["status"], item.get("label"), text, pred.get("label"),
               (pred.get("probabilities") or {}).get(pred.get("label")),
               (item.get("error") or {}).get("detail")] + tops + lifts
        writer.writerow([csv_cell(v) for v in row])
    return buffer.getvalue().encode()
