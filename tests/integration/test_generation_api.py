"""Generation jobs through the HTTP API and the worker on both backends (SQLite + server-less broker; PostgreSQL +
Redis): a gpt2-rt job end to end (result kind, steps × tokens scores, artifacts), and every bad generation request a
422 problem that stores and queues nothing."""
from __future__ import annotations

import json

import pytest

from service.db import Job
from service.jobs import artifacts_of
from tests.helpers import run_here
from tests.integration.test_api import count_jobs, is_problem, queued_messages

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PROMPT = "the film is a charming and"


def body(**over):
    return {"model": "gpt2-rt", "inputs": {"prompt": PROMPT}, "methods": ["gradient"],
            "generate": {"max_new_tokens": 4}, **over}


def test_a_generation_job_end_to_end(api, runtime):
    from worker.runner import run_job

    resp = api.post("/v1/jobs", json=body(methods=["gradient", "integrated_gradients"],
                                         params={"integrated_gradients": {"steps": 8}}, contrast=" movie"))
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    assert run_job(runtime, job_id, "w1") == "succeeded"
    with runtime.db.session() as s:
        job = s.get(Job, job_id)
        result, names = job.result["result"], {a.name for a in artifacts_of(s, job_id)}
        assert job.request["generate"] == {"max_new_tokens": 4, "do_sample": False}
    assert result["kind"] == "generation" and result["contrast"]["tokens"] == [" movie"] * 4
    S, P = len(result["generation"]["token_ids"]), result["prompt_length"]
    assert S == 4 and len(result["tokens"]) == P + S
    for name in ("gradient", "integrated_gradients"):
        scores = result["methods"][name]["scores"]
        assert [sum(v is not None for v in row) for row in scores] == [P + s for s in range(S)]
    assert {"gradient.png", "integrated_gradients.png", "generation-probabilities.png", "gradient.safetensors",
            "result.json"} <= names


NEW_METHODS = ["lime", "attention", "attention_rollout", "sigma", "activations"]


def test_a_job_with_the_other_methods_end_to_end(api, runtime):
    """lime, attention, attention_rollout per step; sigma, activations per layer × token (docs/api.md)."""
    result, names, _ = run_here(api, runtime, body(methods=NEW_METHODS, generate={"max_new_tokens": 3},
                                                    layers=["layer.4"],
                                                    params={"lime": {"samples": 30}, "sigma": {"max_steps": 10}}))
    S, P = len(result["generation"]["token_ids"]), result["prompt_length"]
    methods = result["methods"]
    for name in ("lime", "attention", "attention_rollout"):
        assert [sum(v is not None for v in row) for row in methods[name]["scores"]] == [P + s for s in range(S)]
        assert len(methods[name]["faithfulness"]) == S
    assert len(methods["sigma"]["layers"]["layer.4"]["sigma"]) == P + S and "scores" not in methods["sigma"]
    assert set(methods["activations"]["norms"]) == {"embeddings", "layer.1", "layer.2", "layer.3", "layer.4"}
    assert {f"{m}.png" for m in NEW_METHODS} | {f"{m}.safetensors" for m in NEW_METHODS} \
        | {"activations-norms.png", "result.html"} <= names


BAD = [
    ("prompt over the limit", {"inputs": {"prompt": "word " * 600}}, "inputs", "512"),
    ("new tokens over the limit", {"generate": {"max_new_tokens": 65}}, "generate", "64"),
    ("continuation over the limit", {"inputs": {"prompt": PROMPT, "continuation": " a" * 65}, "generate": None},
     "inputs", "64"),
    ("empty continuation", {"inputs": {"prompt": PROMPT, "continuation": ""}, "generate": None}, "continuation", ""),
    ("method not for LMs", {"methods": ["smoothgrad"]}, "methods", "generative"),
    ("unknown contrast token", {"contrast": "certainly-not-one-token-xyz"}, "contrast", ""),
    ("text on an LM", {"inputs": {"text": PROMPT}}, "inputs", "prompt"),
    ("generate on a classifier", {"model": "minilm-rt", "inputs": {"text": PROMPT}}, "generate", ""),
    ("rollout query on an LM", {"methods": ["attention_rollout"], "params": {"attention_rollout": {"query": "first"}}},
     "params", "query"),
    ("lime stability on an LM", {"methods": ["lime"], "params": {"lime": {"stability": True}}}, "params", "stability"),
]


@pytest.mark.parametrize("name,over,field,says", BAD, ids=[b[0] for b in BAD])
def test_bad_generation_requests_are_problems_and_queue_nothing(api, runtime, name, over, field, says):
    request = {k: v for k, v in body(**over).items() if v is not None}
    before_jobs, before_msgs = count_jobs(runtime, api), queued_messages(runtime)
    problem = is_problem(api.post("/v1/jobs", json=request), 422)
    assert field in json.dumps(problem.get("errors", {})) + problem.get("detail", ""), problem
    assert says in problem["detail"] + json.dumps(problem.get("errors", {})), problem
    assert count_jobs(runtime, api) == before_jobs and queued_messages(runtime) == before_msgs
