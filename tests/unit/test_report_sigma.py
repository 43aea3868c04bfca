"""Audit aggregates for sigma (worker/report.py): corpus information per layer (Guan Eq. 1–2) and r_{i,c} per layer
(Eq. 8–9), recomputed here from the items by hand (plain math, no Lantern code), and the r_{i,c} chart."""
from __future__ import annotations

import math
import statistics

import pytest

from worker.render.audit import charts
from worker.report import aggregate, sigma_layers

K, BOUND = 4, 2.0


def item(sigma: dict[str, list[float]], r: dict[str, dict[str, list[float | None]]]) -> dict:
    layers = {}
    for name, values in sigma.items():
        scores = [-math.log(s / BOUND) for s in values]
        entropy = [0.5 * K * math.log(2 * math.pi * math.e) + K * math.log(s) for s in values]
        layers[name] = {"sigma": values, "scores": scores, "word_scores": scores, "entropy": entropy,
                        "sentence_entropy": sum(entropy), "r": r.get(name, {})}
    return {"methods": {"sigma": {"layers": layers, "bound": BOUND, "embedding_size": K}}, "word_strings": []}


RESULTS = [
    item({"l1": [0.5, 1.0, 2.0], "l2": [2.0, 2.0, 1.0]},
         {"l1": {"neg": [None, 3.0, 1.0], "noun": [None, 5.0, 2.0]}, "l2": {"neg": [None, 1.0, 0.5]}}),
    item({"l1": [0.25, 2.0], "l2": [1.5, 0.1]},
         {"l1": {"neg": [None, 2.0], "noun": [None, 4.0]}, "l2": {"neg": [None, 0.25], "noun": [None, 1.0]}}),
]


def test_corpus_information_per_layer_by_hand():
    out = sigma_layers(RESULTS)
    for layer in ("l1", "l2"):
        # MI(X; S) = H(X) − H(X|S), H(X) = every σ at the bound: per sentence K · Σ_i log(bound / σ_i)
        mi = [K * sum(math.log(BOUND / s) for s in r["methods"]["sigma"]["layers"][layer]["sigma"]) for r in RESULTS]
        h = [sum(0.5 * K * math.log(2 * math.pi * math.e) + K * math.log(s)
                 for s in r["methods"]["sigma"]["layers"][layer]["sigma"]) for r in RESULTS]
        got = out[layer]["corpus_information"]
        assert got["sentences"] == 2
        assert got["mutual_information"] == pytest.approx(statistics.fmean(mi))
        assert got["conditional_entropy"] == pytest.approx(statistics.fmean(h))
        assert got["entropy"] - got["conditional_entropy"] == pytest.approx(got["mutual_information"])
        assert got["mutual_information_per_token"] == pytest.approx(sum(mi) / 5)
    # l1 keeps more than l2 here (smaller σ): its MI is larger
    assert out["l1"]["corpus_information"]["mutual_information"] > out["l2"]["corpus_information"]["mutual_information"]
    assert "r" not in out["l1"]  # no concepts asked


def test_r_per_layer_by_hand_and_in_the_aggregate_and_chart():
    out = sigma_layers(RESULTS, ["neg", "noun"])
    assert out["l1"]["r"]["neg"]["mean"] == pytest.approx(statistics.fmean([3.0, 1.0, 2.0]))
    assert out["l1"]["r"]["noun"]["mean"] == pytest.approx(statistics.fmean([5.0, 2.0, 4.0]))
    assert out["l2"]["r"]["neg"]["mean"] == pytest.approx(statistics.fmean([1.0, 0.5, 0.25]))
    assert out["l2"]["r"]["neg"]["n"] == 3 and out["l2"]["r"]["noun"]["n"] == 1  # Nones (specials) skipped
    items = [{"status": "done", "result": r, "model": "m", "position": i, "label": None} for i, r in enumerate(RESULTS)]
    request = {"models": ["m"], "methods": ["sigma"], "concepts": {"neg": ["bad"], "noun": ["cat"]}}
    agg = aggregate(items, request)
    assert agg["models"]["m"]["sigma"] == out  # the audit path computes the same numbers
    files = charts(agg, ["sigma"])
    assert files["concepts-per-layer.png"].startswith(b"\x89PNG")
    assert "concepts-per-layer.png" not in charts(aggregate(items, {**request, "concepts": {}}), ["sigma"])


def test_items_without_bound_get_no_corpus_estimate():
    legacy = [{"methods": {"sigma": {"layers": {"l1": {"sigma": [1.0], "scores": [0.7]}}}}}]
    assert "corpus_information" not in sigma_layers(legacy)["l1"]
