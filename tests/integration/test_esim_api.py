"""The seeds' NLI examples (Ghaeini et al. 2018 §3.1, §3.1.2) through the API and the worker, with the shipped
esim-300 and esim-50 bundles: predictions, the three methods' results and figures, and compare_with panels."""
from __future__ import annotations

import pytest

from service.db import Job
from service.jobs import artifacts_of

pytestmark = pytest.mark.slow

PREMISE = "A kid is playing in the garden"
GARDEN = [("A kid is taking a nap in the garden", "contradiction"),
          ("A kid is having fun in the garden with her family", "neutral"),
          ("A kid is having fun in the garden", "entailment")]
METHODS = ["attention", "attention_saliency", "gating"]


def run(api, runtime, body):
    from worker.runner import run_job

    resp = api.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    assert run_job(runtime, job_id, "w1") == "succeeded"
    with runtime.db.session() as s:
        job = s.get(Job, job_id)
        names = {a.name: a for a in artifacts_of(s, job_id)}
        return job.result, names


@pytest.mark.parametrize("backend", ["sqlite"])
def test_garden_examples_through_the_api(api, runtime):
    for hypothesis, gold in GARDEN:
        doc, artifacts = run(api, runtime, {"model": "esim-300", "inputs": {"premise": PREMISE,
                                                                              "hypothesis": hypothesis},
                                            "methods": METHODS})
        result = doc["result"]
        assert result["prediction"]["label"] == gold, (hypothesis, result["prediction"])
        saliency = result["methods"]["attention_saliency"]
        assert saliency["shape"] == [len(PREMISE.split()), len(hypothesis.split())]
        assert saliency["premise"] == PREMISE.split() and saliency["hypothesis"] == hypothesis.split()
        assert set(result["methods"]["gating"]["gates"]) >= {"inference_lstm.fwd.input", "input_lstm.bwd.cell"}
        for name in ("attention.png", "attention_saliency.png", "gating-input_lstm.png",
                     "gating-inference_lstm.png", "attention_saliency.safetensors", "gating.safetensors"):
            assert name in artifacts
        assert runtime.store.get(artifacts["attention_saliency.png"].storage_key)[:4] == b"\x89PNG"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_names_and_gender_compared_across_sizes(api, runtime):
    expected = {"John": "entailment", "Mary": "contradiction"}
    for name, gold in expected.items():
        doc, artifacts = run(api, runtime, {"model": "esim-300", "compare_with": ["esim-50"],
                                            "inputs": {"premise": f"{name} ordered a book from amazon",
                                                       "hypothesis": "A man ordered a book"},
                                            "methods": ["attention", "attention_saliency"]})
        assert doc["result"]["prediction"]["label"] == gold
        other = doc["compare"]["esim-50"]
        assert other["model"]["name"] == "esim-50" and "attention_saliency" in other["methods"]
        assert {"attention_saliency-compare.png", "compare-esim-50-attention_saliency.png",
                "compare-esim-50-attention.png"} <= set(artifacts)
        png = runtime.store.get(artifacts["attention_saliency-compare.png"].storage_key)
        assert png[:4] == b"\x89PNG"
