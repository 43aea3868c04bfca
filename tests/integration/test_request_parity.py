"""The API and the worker refuse the same requests with the same words: one table of bad requests, each answered
422 at submit with the engine's field errors, and — planted in a stored job row, as if the submit check had been
skipped — failed by the worker with the engine's message before any work."""
from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import update

from service.db import Job
from service.validation import limits_of
from worker.methods import ExplainRequest, RequestError, UnknownMethods, validate
from worker.models import load_model
from worker.runner import run_job

pytestmark = pytest.mark.postgres

TEXT = "A gripping, beautifully acted film."


def job(**over):
    return {"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"], **over}


BAD = [
    ("unknown method", {"methods": ["astrology"]}),
    ("method that does not apply (gating: ESIM only)", {"methods": ["gating"]}),
    ("unknown target", {"target": "sarcastic"}),
    ("unknown layer", {"layers": ["layer.99"]}),
    ("params of a method not asked", {"params": {"smoothgrad": {"samples": 3}}}),
    ("out-of-range param", {"methods": ["smoothgrad"], "params": {"smoothgrad": {"samples": 10**9}}}),
    ("over LANTERN_MAX_STEPS", {"methods": ["integrated_gradients"],
                                "params": {"integrated_gradients": {"steps": 64}}}),
    ("the method's own check", {"methods": ["activations"], "params": {"activations": {"layer": "bogus"}}}),
    ("zero-width text", {"inputs": {"text": "\u200b\u200b"}}),
    ("over LANTERN_MAX_TOKENS", {"inputs": {"text": "good " * 60}}),
]


@pytest.fixture
def settings(settings):
    """Limits low enough that a few words and a few steps cross them."""
    return dataclasses.replace(settings, max_steps=50, max_tokens=40)


@pytest.fixture(scope="module")
def minilm_rt():
    return load_model("minilm-rt", device="cpu")


def engine_refusal(adapter, body, settings) -> RequestError:
    with pytest.raises(RequestError) as err:
        validate(adapter, ExplainRequest.from_document(body), limits_of(settings))
    return err.value


@pytest.mark.parametrize("name,over", BAD, ids=[b[0] for b in BAD])
def test_the_api_answers_the_engines_refusal(api, runtime, minilm_rt, name, over):
    refusal = engine_refusal(minilm_rt, job(**over), runtime.settings)
    resp = api.post("/v1/jobs", json=job(**over))
    assert resp.status_code == 422 and resp.content_type == "application/problem+json", resp.data
    problem = resp.get_json()
    if isinstance(refusal, UnknownMethods):  # the API adds where the known methods are listed
        assert problem["detail"] == f"{refusal.detail}; see GET /v1/methods"
        assert problem["errors"] == {"methods": [problem["detail"]]}
    else:
        assert (problem["detail"], problem["errors"]) == (refusal.detail, refusal.errors)


@pytest.mark.parametrize("name,over", BAD, ids=[b[0] for b in BAD])
def test_the_worker_refuses_the_same_before_any_work(api, runtime, minilm_rt, name, over):
    refusal = engine_refusal(minilm_rt, job(**over), runtime.settings)
    accepted = api.post("/v1/jobs", json=job())
    assert accepted.status_code == 202, accepted.data
    job_id = accepted.get_json()["id"]
    with runtime.db.session() as s:  # the stored row, as if the submit check had let it through
        row = s.get(Job, job_id).request
        s.execute(update(Job).where(Job.id == job_id).values(request={**row, **over}))
    assert run_job(runtime, job_id, "w1") == "failed"
    error = api.get(f"/v1/jobs/{job_id}").get_json()["error"]
    assert error["status"] == 422 and error["detail"] == str(refusal)


def test_a_good_request_runs_from_the_row_it_was_stored_as(api, runtime):
    body = job(methods=["smoothgrad"], params={"smoothgrad": {"samples": 2}}, seed=5)
    doc = api.post("/v1/jobs", json=body).get_json()
    stored = doc["request"]
    assert set(stored) == {"model", "compare_with", "inputs", "methods", "layers", "target", "score", "params",
                           "seed", "compare_revisions"}
    assert stored["params"]["smoothgrad"]["noise"] == 0.1  # filled at submit
    assert run_job(runtime, doc["id"], "w1") == "succeeded"
    result = api.get(f"/v1/jobs/{doc['id']}").get_json()["result"]
    assert result["methods"]["smoothgrad"]["params"] == stored["params"]["smoothgrad"]
    assert result["provenance"]["seed"] == 5
