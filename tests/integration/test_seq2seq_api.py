"""Encoder–decoder LMs through the HTTP API and the worker on both backends (SQLite + server-less broker; PostgreSQL +
Redis): a tiny T5 / BART folder (built as tests/unit/test_seq2seq_lm.py builds it) registered with ``POST /v1/models``,
explained step by step by a job, and bad generation requests refused as 422 problems that store and queue nothing."""
from __future__ import annotations

import io
import json

import pytest

from service.db import Job
from service.jobs import artifacts_of
from tests.integration.test_api import count_jobs, is_problem, queued_messages
from tests.unit.test_seq2seq_lm import KINDS, PROMPT, build

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq-api")
    return {kind: build(kind, root / f"{kind}-tiny") for kind in KINDS}


def register(api, name: str, folder) -> dict:
    files = [(io.BytesIO(p.read_bytes()), p.name) for p in sorted(folder.iterdir()) if p.is_file()]
    resp = api.post("/v1/models", data={"name": name, "files": files}, content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


@pytest.mark.parametrize("kind", KINDS)
def test_a_registered_encoder_decoder_explained_by_a_job(api, runtime, folders, kind):
    from transformers import AutoTokenizer

    from worker.runner import run_job

    card = register(api, f"{kind}-tiny", folders[kind])
    assert card["layers"][:2] == ["embeddings", "encoder.layer.1"] and "cross_attention.1" in card["attention"]
    resp = api.post("/v1/jobs", json={"model": f"{kind}-tiny", "inputs": {"prompt": PROMPT},
                                      "methods": ["gradient", "occlusion"], "generate": {"max_new_tokens": 3}})
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    assert run_job(runtime, job_id, "w1") == "succeeded"
    with runtime.db.session() as s:
        result, names = s.get(Job, job_id).result["result"], {a.name for a in artifacts_of(s, job_id)}
    source = AutoTokenizer.from_pretrained(folders[kind], local_files_only=True)(PROMPT)["input_ids"]
    S, P = len(result["generation"]["token_ids"]), result["prompt_length"]
    assert result["kind"] == "generation" and P == len(source) + 1 and 1 <= S <= 3 and len(result["tokens"]) == P + S
    for name in ("gradient", "occlusion"):
        scores = result["methods"][name]["scores"]
        assert [sum(v is not None for v in row) for row in scores] == [P + s for s in range(S)]
    assert {"gradient.png", "occlusion.png", "generation-probabilities.png", "result.json"} <= names


BAD = [
    ("bare attention name", {"methods": ["attention"], "params": {"attention": {"figure_layer": "attention.1"}}},
     "encoder.attention.1"),  # no bare attention.k on an encoder–decoder: the refusal lists the names it has
    ("empty continuation", {"inputs": {"prompt": PROMPT, "continuation": ""}}, "continuation"),
    ("text instead of a prompt", {"inputs": {"text": PROMPT}}, "prompt"),
    ("unknown contrast token", {"contrast": "certainly-not-one-token-xyz", "generate": {"max_new_tokens": 2}},
     "contrast"),
]


@pytest.mark.parametrize("name,over,says", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_on_an_encoder_decoder_are_problems_and_queue_nothing(api, runtime, folders, name, over,
                                                                          says):
    register(api, "t5-tiny", folders["t5"])
    request = {"model": "t5-tiny", "inputs": {"prompt": PROMPT}, "methods": ["gradient"], **over}
    before_jobs, before_msgs = count_jobs(runtime, api), queued_messages(runtime)
    problem = is_problem(api.post("/v1/jobs", json=request), 422)
    assert says in problem["detail"] + json.dumps(problem.get("errors", {})), problem
    assert count_jobs(runtime, api) == before_jobs and queued_messages(runtime) == before_msgs
