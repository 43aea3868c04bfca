"""The `sigma` method through `explain` and through the HTTP API: result contract, normalisation used, 4xx at submit."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load as load_safetensors

from worker.methods import explain, registry
from worker.models import bundle_dir, load_model

QUICK = {"max_steps": 30, "eval_samples": 16}


@pytest.mark.slow
def test_result_contract_with_statistics(minilm):
    out = explain(minilm, {"text": "a rare bird"}, ["sigma"], layers=["layer.1", "layer.6"],
                  params={"sigma": QUICK}, seed=3)
    part = out.result["methods"]["sigma"]
    n = len(out.result["tokens"])
    assert part["normalization"] == "std" and part["normalization_fallback"] is False
    assert part["bound"] == pytest.approx(10 * minilm.embedding_std())
    assert part["params"]["lambda"] == 0.1 and part["params"]["restarts"] == 1
    for name in ("layer.1", "layer.6"):
        entry = part["layers"][name]
        assert len(entry["sigma"]) == len(entry["scores"]) == len(entry["entropy"]) == n
        assert all(0 < s <= part["bound"] for s in entry["sigma"])
        assert entry["sentence_entropy"] == pytest.approx(sum(entry["entropy"]))
        assert len(entry["word_scores"]) == len(out.result["words"])
        assert entry["objective"] == min(entry["start_objectives"])
    tensors = out.tensors["sigma"]
    assert set(tensors) == {f"{k}.{name}" for k in ("sigma", "scores", "entropy") for name in ("layer.1", "layer.6")}
    assert out.figures["sigma.png"].startswith(b"\x89PNG")
    again = explain(minilm, {"text": "a rare bird"}, ["sigma"], layers=["layer.1", "layer.6"],
                    params={"sigma": QUICK}, seed=3)
    assert again.result["methods"]["sigma"]["layers"] == part["layers"]  # seeded


def test_model_without_statistics_runs_and_says_so(tmp_path):
    copy = tmp_path / "no-stats"
    copy.mkdir()
    shutil.copy(bundle_dir("all-minilm-l6-v2") / "config.json", copy / "config.json")
    adapter = load_model(copy)
    assert adapter.bundle_file("sigma_stats.safetensors") is None
    out = explain(adapter, {"text": "a rare bird"}, ["sigma"], layers=["layer.2"], params={"sigma": QUICK})
    part = out.result["methods"]["sigma"]
    assert part["normalization"] == "mean_square" and part["normalization_fallback"] is True


def test_stats_file_is_per_unit_std_of_each_layer(minilm):
    data = load_safetensors((bundle_dir("all-minilm-l6-v2") / "sigma_stats.safetensors").read_bytes())
    assert set(data) == set(minilm.layer_names)
    assert all(v.shape == (384,) and (v > 0).all() for v in data.values())


def test_methods_catalog_lists_sigma_params():
    method = registry()["sigma"]
    assert not method.needs_head and method.takes_layers
    fields = method.params().fields
    assert {"lambda", "bound", "normalization", "samples", "max_steps", "lr", "init", "restarts"} <= set(fields)


# ------------------------------------------------------------------------------------------------- API (SQLite)
@pytest.fixture
def backend() -> str:
    return "sqlite"


def sigma_request(**over):
    return {"model": "all-minilm-l6-v2", "inputs": {"text": "a rare bird"}, "methods": ["sigma"], **over}


@pytest.mark.parametrize("body", [
    sigma_request(inputs={"text": "   "}),
    sigma_request(layers=["layer.9"]),
    sigma_request(params={"sigma": {"max_steps": 0}}),
    sigma_request(params={"sigma": {"max_steps": 10**6}}),
    sigma_request(params={"sigma": {"lambda": -1.0}}),
    sigma_request(params={"sigma": {"lambda": 0}}),
    sigma_request(params={"sigma": {"normalization": "l2"}}),
    sigma_request(params={"sigma": {"iterations": 10}}),
])
def test_bad_sigma_requests_are_4xx_problems_at_submit(api, body):
    resp = api.post("/v1/jobs", json=body)
    assert resp.status_code == 422, resp.data
    assert resp.content_type == "application/problem+json"


def test_good_sigma_request_is_accepted_with_defaults(api):
    resp = api.post("/v1/jobs", json=sigma_request(layers=["layer.6"]))
    assert resp.status_code == 202, resp.data
    params = resp.get_json()["request"]["params"]["sigma"]
    assert params["lambda"] == 0.1 and params["normalization"] == "std" and params["bound"] is None
    assert json.loads(json.dumps(params)) == params  # JSON-clean
