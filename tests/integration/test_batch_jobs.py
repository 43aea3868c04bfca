"""Batch jobs (docs/api.md, Batch jobs): `inputs` as a list runs through the engine together, and each item's
result is the result the same input gets as a single-input job; artifacts per item, one combined safetensors; the
refusals (over the limit, a bad item by position, fields that take a single input) are 422s that store nothing."""
from __future__ import annotations

import pytest
from safetensors.torch import load

from service import jobs
from service.db import Job
from worker.runner import run_job

TEXTS = [{"text": "A gripping, beautifully acted film."}, {"text": "Dull."},
         {"text": "The plot is an unbelievably tangled mess, yet the lead is wonderful."}]
PAIRS = [{"premise": "A man plays a guitar on stage.", "hypothesis": "A man is performing music."},
         {"premise": "A dog sleeps.", "hypothesis": "The dog is running in the park."}]
METHODS = ["gradient", "occlusion"]  # one with a batched pass, one run item by item


def run(api, runtime, body: dict) -> tuple[dict, dict[str, bytes]]:
    """Submit, run on this process's worker, and return the job document and its artifacts' bytes."""
    resp = api.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    assert run_job(runtime, job_id, "w1") == "succeeded"
    doc = api.get(f"/v1/jobs/{job_id}").get_json()
    with runtime.db.session() as s:
        files = {a.name: runtime.store.get(a.storage_key) for a in jobs.artifacts_of(s, job_id)}
    return doc, files


TIMINGS = {"seconds"}  # how long a method took: not a result


def close(got, want) -> None:
    """Equal JSON, numbers up to float noise (a padded batch and a single pass round differently)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want.keys() - TIMINGS:
            close(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            close(a, b)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    else:
        assert got == want


def same_result(got: dict, want: dict) -> None:
    """The whole result document: tokens, prediction, every method's scores, word scores, params and faithfulness,
    the model and the provenance."""
    assert got["methods"].keys() == want["methods"].keys() and got["tokens"] == want["tokens"]
    close(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the engine's work; the stores are tested apart
@pytest.mark.parametrize(("model", "inputs", "methods"), [("minilm-rt", TEXTS, METHODS),
                                                          ("esim-50", PAIRS, ["gradient"])])
def test_a_batch_item_is_the_single_input_job_s_result(api, runtime, model, inputs, methods):
    batch, files = run(api, runtime, {"model": model, "inputs": inputs, "methods": methods})
    result = batch["result"]
    assert result["kind"] == "batch" and result["schema_version"] == 1 and len(result["items"]) == len(inputs)
    assert batch["request"]["inputs"] == inputs
    combined = load(files["batch.safetensors"])
    for i, one in enumerate(inputs):
        single, single_files = run(api, runtime, {"model": model, "inputs": one, "methods": methods})
        assert "kind" not in single["result"]  # a single-input job's document is as it was
        same_result(result["items"][i], single["result"])
        for method in methods:
            assert single_files[f"{method}.png"][:8] == files[f"item-{i}-{method}.png"][:8] == b"\x89PNG\r\n\x1a\n"
            item_tensors = load(files[f"item-{i}-{method}.safetensors"])
            assert item_tensors.keys() == load(single_files[f"{method}.safetensors"]).keys()
            for key, tensor in item_tensors.items():
                assert combined[f"item-{i}.{method}.{key}"].equal(tensor)
    names = {a["name"] for a in batch["artifacts"]}
    assert not any("/" in n for n in names) and "result.json" in names
    assert all(n in ("batch.safetensors", "result.json", "result.html") or n.startswith("item-") for n in names), names


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_over_the_batch_limit_is_a_422_naming_the_limit(runtime, new_key):
    from dataclasses import replace

    from service.app import create_app
    from service.runtime import Runtime
    from tests.helpers import Api

    small = Runtime(replace(runtime.settings, max_batch_inputs=2))
    api = Api(create_app(runtime=small), new_key("acme"))
    resp = api.post("/v1/jobs", json={"model": "minilm-rt", "inputs": TEXTS, "methods": ["gradient"]})
    body = resp.get_json()
    assert resp.status_code == 422 and "at most 2" in body["detail"] and "LANTERN_MAX_BATCH_INPUTS" in body["detail"]
    assert body["errors"] == {"inputs": [body["detail"]]} and body["type"] == "/problems/invalid-request"
    assert api.post("/v1/jobs", json={"model": "minilm-rt", "inputs": TEXTS[:2],
                                      "methods": ["gradient"]}).status_code == 202
    small.close()


@pytest.mark.parametrize(("inputs", "extra", "field", "names"), [
    ([TEXTS[0], {"text": "  "}], {}, "inputs", {"1": {"text": ["must not be empty"]}}),  # the schema's check
    ([TEXTS[0], TEXTS[1], {"text": "word " * 600}], {}, "inputs", "2"),  # the engine's (over max_tokens)
    ([TEXTS[0], {"text": "ok", "premise": "p"}], {}, "inputs", "1"),
    ([TEXTS[0], 7], {}, "inputs", "1"),
    ([], {}, "inputs", None),
    (TEXTS[:2], {"compare_with": ["minilm-rt-copy"]}, "compare_with", None),
    ([TEXTS[0], {"prompt": "Once upon"}], {}, "inputs", None),
])
def test_a_bad_batch_is_a_422_naming_the_item_and_stores_nothing(api, runtime, inputs, extra, field, names):
    with runtime.db.session() as s:
        before = s.query(Job).count()  # the Postgres database is shared by the session's tests
    resp = api.post("/v1/jobs", json={"model": "minilm-rt", "inputs": inputs, "methods": ["gradient"], **extra})
    body = resp.get_json()
    assert resp.status_code == 422, body
    assert field in body["errors"], body
    if isinstance(names, dict):
        assert body["errors"][field] == names
    elif names is not None:
        assert list(body["errors"][field]) == [names]
        if "tokens" in str(body["errors"]):
            assert body["detail"].startswith(f"input {names}: ") and "602 tokens" in body["detail"]
    with runtime.db.session() as s:
        assert s.query(Job).count() == before
