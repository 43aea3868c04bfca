"""Seed stability of the stochastic methods (lime, smoothgrad, shap's kernel) and every method's `seconds`, through
`explain`: the reported mean Spearman ρ equals scipy's over the three runs made here with the same seeds."""
from __future__ import annotations

import itertools
import statistics

import pytest
from scipy.stats import spearmanr

from worker.methods import explain

TEXT = "a gorgeous , witty , seductive movie ."
CHEAP = {"lime": {"samples": 40}, "smoothgrad": {"samples": 4}, "shap": {"algorithm": "kernel", "max_evals": 30}}


@pytest.mark.parametrize("method", ["lime", "smoothgrad", "shap"])
def test_stability_is_the_mean_spearman_over_three_seeds(minilm_rt, method):
    params = {method: {**CHEAP[method], "stability": True}}
    part = explain(minilm_rt, {"text": TEXT}, [method], params=params, seed=5, figures=False).result["methods"][method]
    assert part["stability"]["seeds"] == [5, 6, 7]
    runs = [explain(minilm_rt, {"text": TEXT}, [method], params={method: CHEAP[method]}, seed=s,
                    figures=False).result for s in (5, 6, 7)]
    keep = [i for i, special in enumerate(runs[0]["special"]) if not special]
    scores = [[r["methods"][method]["scores"][i] for i in keep] for r in runs]
    assert scores[0] == [part["scores"][i] for i in keep]  # the first run is the result itself
    expected = statistics.fmean(spearmanr(a, b).statistic for a, b in itertools.combinations(scores, 2))
    assert part["stability"]["spearman"] == pytest.approx(expected, abs=1e-9)
    assert "stability" not in runs[0]["methods"][method]  # off by default


def test_a_method_without_noise_is_perfectly_stable(minilm_rt):
    params = {"smoothgrad": {"samples": 2, "noise": 0.0, "stability": True}}
    part = explain(minilm_rt, {"text": TEXT}, ["smoothgrad"], params=params, figures=False).result["methods"]
    assert part["smoothgrad"]["stability"]["spearman"] == pytest.approx(1.0)


def test_deterministic_methods_take_no_stability_param(minilm_rt):
    from worker.methods import RequestError

    with pytest.raises(RequestError, match="stability"):
        explain(minilm_rt, {"text": TEXT}, ["gradient"], params={"gradient": {"stability": True}})


def test_every_method_entry_has_its_seconds(minilm_rt):
    methods = ["gradient", "occlusion", "shap"]
    result = explain(minilm_rt, {"text": TEXT}, methods, params={"shap": {"max_evals": 40}}, figures=False).result
    for name in methods:
        assert 0.0 < result["methods"][name]["seconds"] < 600, name
