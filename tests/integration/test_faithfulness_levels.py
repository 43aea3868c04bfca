"""The request option `faithfulness` (docs/api.md) through the API and the real runner: a bad level is a 422 that
stores and queues nothing (jobs, sync explain, audits); "full" said or not is one request (the same row, the same
Idempotency-Key replay); each level of a job on the embedded stack ("basic": full's AOPC numbers without the
normalised AOPC, "none": no faithfulness); an audit at "basic" and "none"; a generation job at each level."""
from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from tests.helpers import run_here
from tests.integration.test_api import count_jobs, is_problem, queued_messages
from tests.integration.test_audits import ITEMS, run_all
from tests.integration.test_batch_jobs import close

pytestmark = pytest.mark.postgres

TEXT = "The film is a gripping, beautifully acted story that never lets go of its audience until the end"
AOPC = ("bins", "k", "probability", "comprehensiveness", "sufficiency", "random", "lift", "per_bin")  # all but normalized


def job_request(**over) -> dict:
    return {"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient", "occlusion"], "seed": 3, **over}


BAD = [
    ("job", "/v1/jobs", job_request(faithfulness="some")),
    ("job, not a string", "/v1/jobs", job_request(faithfulness=0)),
    ("sync explain", "/v1/models/minilm-rt:explain", {"instances": [{"text": TEXT}], "methods": ["gradient"],
                                                      "faithfulness": "FULL"}),
    ("audit", "/v1/audits", {"model": "minilm-rt", "corpus": {"items": ITEMS[:2]}, "methods": ["gradient"],
                             "faithfulness": "normalized"}),
]


@pytest.mark.parametrize("name,path,body", BAD, ids=[b[0] for b in BAD])
def test_a_bad_level_is_a_422_naming_the_field_and_changes_nothing(api, runtime, name, path, body):
    api.post("/v1/jobs", json=job_request())  # something stored already, which must stay as it is
    before_jobs, before_msgs = count_jobs(runtime, api), queued_messages(runtime)
    problem = is_problem(api.post(path, json=body), 422)
    assert list(problem["errors"]) == ["faithfulness"], problem
    assert count_jobs(runtime, api) == before_jobs and queued_messages(runtime) == before_msgs
    assert api.get("/v1/audits").get_json()["items"] == []


def test_the_served_spec_documents_the_option(api):
    from jsonschema import Draft202012Validator

    spec = api.get("/v1/openapi.json").get_json()
    for name, doc in (("JobRequest", job_request()), ("ExplainInstances", {"instances": [{"text": TEXT}],
                                                                           "methods": ["gradient"]}),
                      ("AuditRequest", {"model": "minilm-rt", "corpus": {"name": "rt-test"}, "methods": ["gradient"]})):
        field = spec["components"]["schemas"][name]["properties"]["faithfulness"]
        assert (field["enum"], field["default"]) == (["full", "basic", "none"], "full")
        validator = Draft202012Validator({**spec["components"]["schemas"][name], "components": spec["components"]})
        assert validator.is_valid({**doc, "faithfulness": "basic"})
        assert not validator.is_valid({**doc, "faithfulness": "some"})  # as the server refuses it


def test_full_said_or_not_is_one_request(api, runtime):
    first = api.post("/v1/jobs", json=job_request(), headers={"Idempotency-Key": "k1"}).get_json()
    said = api.post("/v1/jobs", json=job_request(faithfulness="full"), headers={"Idempotency-Key": "k1"})
    assert said.status_code == 202 and said.get_json()["id"] == first["id"]  # a replay, not a 409
    assert "faithfulness" not in first["request"]  # the row a request without the option always made
    is_problem(api.post("/v1/jobs", json=job_request(faithfulness="basic"), headers={"Idempotency-Key": "k1"}), 409)
    basic = api.post("/v1/jobs", json=job_request(faithfulness="basic")).get_json()
    assert basic["request"]["faithfulness"] == "basic"
    assert count_jobs(runtime, api) == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the embedded default's stores: the engine's work
def test_each_level_of_a_job(api, runtime):
    # "basic" and "none" first: the full job's bound search must not be what makes basic's numbers equal
    basic, basic_names, basic_page = run_here(api, runtime, job_request(faithfulness="basic"))
    none, none_names, none_page = run_here(api, runtime, job_request(faithfulness="none"))
    full, full_names, full_page = run_here(api, runtime, job_request())
    assert basic_names == none_names == full_names  # every figure and file, whatever the level
    for name in ("gradient", "occlusion"):
        want = full["methods"][name]["faithfulness"]
        got = basic["methods"][name]["faithfulness"]
        assert want["normalized"]["search"] == "single" and want["normalized"]["comprehensiveness"] is not None
        assert got["normalized"] is None and set(got) == set(want)
        close({k: got[k] for k in AOPC}, {k: want[k] for k in AOPC})  # the same masked rows: float noise at most
        assert "faithfulness" not in none["methods"][name]  # as a part without token scores has none
        for other in (basic, none):  # the explanation itself is the same
            assert other["methods"][name]["scores"] == full["methods"][name]["scores"]
    for page in (full_page, basic_page):
        assert "Faithfulness (ERASER AOPC)" in page
    assert "normalised comp." in full_page and "No normalised AOPC" not in full_page
    assert "normalised comp." not in basic_page and "No normalised AOPC" in basic_page  # not a column of dashes
    assert 'the job asked for faithfulness "basic"' in basic_page  # the request's level, not a guess from nulls
    assert "Faithfulness (ERASER AOPC)" not in none_page


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("level", ["basic", "none"])
def test_an_audit_at_a_lower_level_succeeds(api, runtime, level):
    resp = api.post("/v1/audits", json={"model": "minilm-rt", "corpus": {"items": ITEMS}, "methods": ["gradient"],
                                        "batch_size": 2, "faithfulness": level})
    assert resp.status_code == 202, resp.get_json()
    audit_id = resp.get_json()["id"]
    run_all(runtime, audit_id)
    doc = api.get(f"/v1/audits/{audit_id}").get_json()
    assert doc["status"] == "succeeded" and doc["counts"]["done"] == 5
    assert doc["request"]["faithfulness"] == level
    part = doc["aggregates"]["models"]["minilm-rt"]["methods"]["gradient"]
    names = {a["name"] for a in doc["artifacts"]}
    rows = list(csv.DictReader(io.StringIO(api.get(f"/v1/audits/{audit_id}/artifacts/items.csv").data.decode())))
    page = api.get(f"/v1/audits/{audit_id}/artifacts/report.html").data.decode()
    assert len(rows) == 5 and "report.html" in names
    if level == "none":
        assert "faithfulness" not in part and "faithfulness.png" not in names
        assert {r["gradient_lift"] for r in rows} == {""}
        assert "faithfulness over the items" not in page
    else:  # the AOPC spreads, from the items' own numbers
        with runtime.db.session() as s:
            from service.db import AuditItem

            items = s.scalars(select(AuditItem).where(AuditItem.audit_id == audit_id)).all()
            lifts = [i.result["methods"]["gradient"]["faithfulness"]["lift"] for i in items]
            assert all(i.result["methods"]["gradient"]["faithfulness"]["normalized"] is None for i in items)
        assert part["faithfulness"]["lift"]["n"] == 5
        assert part["faithfulness"]["lift"]["mean"] == pytest.approx(sum(lifts) / 5)
        assert "faithfulness.png" in names and "faithfulness over the items" in page


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_generation_job_at_each_level(api, runtime):
    body = {"model": "gpt2-rt", "inputs": {"prompt": "the film is a charming and", "continuation": " funny story"},
            "methods": ["gradient"], "seed": 3}
    basic = run_here(api, runtime, {**body, "faithfulness": "basic"})[0]["methods"]["gradient"]
    none = run_here(api, runtime, {**body, "faithfulness": "none"})[0]["methods"]["gradient"]
    full = run_here(api, runtime, body)[0]["methods"]["gradient"]
    assert len(basic["faithfulness"]) == len(full["faithfulness"]) == len(full["scores"]) > 1  # one per step
    for got, want in zip(basic["faithfulness"], full["faithfulness"], strict=True):
        assert got["normalized"] is None and want["normalized"] is not None
        close({k: got[k] for k in AOPC}, {k: want[k] for k in AOPC})
    assert "faithfulness" not in none and none["scores"] == full["scores"]
