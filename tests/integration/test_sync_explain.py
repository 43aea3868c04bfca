"""Synchronous explain, POST /v1/models/{name}:explain (docs/api.md): KServe V1's shape, a normal job made by the
same submit as POST /v1/jobs (one instance: a single job, several: a batch job), waited on up to the timeout (capped
by LANTERN_SYNC_TIMEOUT_CAP); done → 200 with the explanations, not done → 202 exactly as POST /v1/jobs answers."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from service.db import Job
from tests.helpers import embedded_stack
from worker.runner import run_job

TEXT = {"text": "A gripping, beautifully acted film."}
OTHER = {"text": "Dull and far too long."}


def test_not_done_in_time_is_202_as_post_jobs_answers(api, runtime):
    resp = api.post("/v1/models/minilm-rt:explain", json={"instances": [TEXT], "methods": ["gradient"],
                                                           "timeout": 0}, headers={"Idempotency-Key": "sync-1"})
    doc = resp.get_json()
    assert resp.status_code == 202 and resp.headers["Location"] == f"/v1/jobs/{doc['id']}"
    assert resp.headers["Retry-After"] == str(runtime.settings.retry_after)
    posted = api.post("/v1/jobs", json={"model": "minilm-rt", "inputs": TEXT, "methods": ["gradient"]})
    assert doc.keys() == posted.get_json().keys() and doc["status"] == "queued"
    assert doc["request"]["inputs"] == TEXT and doc["request"]["params"] == {"gradient": posted.get_json()[
        "request"]["params"]["gradient"]}
    again = api.post("/v1/models/minilm-rt:explain", json={"instances": [TEXT], "methods": ["gradient"],
                                                            "timeout": 0}, headers={"Idempotency-Key": "sync-1"})
    assert again.get_json()["id"] == doc["id"]  # the same submit: Idempotency-Key replays
    several = api.post("/v1/models/minilm-rt:explain", json={"instances": [TEXT, OTHER], "methods": ["gradient"],
                                                              "timeout": 0, "seed": 3})
    assert several.status_code == 202 and several.get_json()["request"]["inputs"] == [TEXT, OTHER]
    assert several.get_json()["request"]["seed"] == 3


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/v1/models/no-such:explain", {"instances": [TEXT], "methods": ["gradient"]}, 404, None),
    ("/v1/models/minilm-rt:explain", {"instances": [], "methods": ["gradient"]}, 422, "instances"),
    ("/v1/models/minilm-rt:explain", {"instances": [TEXT, {"text": " "}], "methods": ["gradient"]}, 422,
     "instances"),
    ("/v1/models/minilm-rt:explain", {"instances": [TEXT], "methods": ["nope"]}, 422, "methods"),
    ("/v1/models/minilm-rt:explain", {"instances": [TEXT], "methods": ["gradient"], "timeout": -1}, 422,
     "timeout"),
    ("/v1/models/minilm-rt:explain", {"inputs": TEXT, "methods": ["gradient"]}, 422, "inputs"),
])
def test_bad_calls_are_problems_and_store_nothing(api, runtime, path, body, status, field):
    resp = api.post(path, json=body)
    problem = resp.get_json()
    assert resp.status_code == status and resp.mimetype == "application/problem+json", problem
    assert field is None or field in problem["errors"], problem
    with runtime.db.session() as s:
        assert s.query(Job).count() == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_done_in_time_is_200_with_the_explanations(api, runtime):
    """A worker in this process (another thread) runs the job while the call waits; the wait is capped."""
    def work() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with runtime.db.session() as s:
                queued = s.query(Job.id).filter(Job.status == "queued").all()
            for (job_id,) in queued:
                run_job(runtime, job_id, "w1")
            if queued:
                return
            time.sleep(0.05)

    worker = threading.Thread(target=work)
    worker.start()
    resp = api.post("/v1/models/minilm-rt:explain", json={"instances": [TEXT], "methods": ["gradient"],
                                                           "timeout": 600})
    worker.join()
    body = resp.get_json()
    assert resp.status_code == 200, body
    job = api.get(f"/v1/jobs/{body['job']['id']}").get_json()
    assert job["status"] == "succeeded" and body["explanations"] == [job["result"]]
    assert "result" not in body["job"] and body["job"]["artifacts"] == job["artifacts"]


@pytest.mark.e2e
@pytest.mark.slow
def test_sync_explain_against_the_embedded_stack(tmp_path):
    """`lantern up` (API + a worker process): one instance and a batch of two; the explanations are the jobs'
    results; a short timeout answers 202 and the job then finishes."""
    with embedded_stack(tmp_path) as stack:
        auth = {"Authorization": f"Bearer {stack.key}"}
        url = f"{stack.url}/v1/models/minilm-rt:explain"
        one = requests.post(url, json={"instances": [TEXT], "methods": ["gradient"], "timeout": 60}, headers=auth,
                            timeout=90)
        assert one.status_code == 200, one.text
        [explanation] = one.json()["explanations"]
        assert explanation["prediction"]["label"] == "positive" and explanation["model"]["name"] == "minilm-rt"
        two = requests.post(url, json={"instances": [TEXT, OTHER], "methods": ["gradient"], "timeout": 60},
                            headers=auth, timeout=90)
        assert two.status_code == 200, two.text
        first, second = two.json()["explanations"]
        assert first["tokens"] == explanation["tokens"]
        assert first["methods"]["gradient"]["scores"] == pytest.approx(explanation["methods"]["gradient"]["scores"],
                                                                       rel=1e-4, abs=1e-6)
        assert second["prediction"]["label"] == "negative"
        late = requests.post(url, json={"instances": [OTHER], "methods": ["gradient"], "timeout": 0}, headers=auth,
                             timeout=30)
        assert late.status_code == 202 and late.headers["Location"] == f"/v1/jobs/{late.json()['id']}"
        deadline = time.monotonic() + 120
        while requests.get(stack.url + late.headers["Location"], headers=auth, timeout=30).json()["status"] in (
                "queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
        done = requests.get(stack.url + late.headers["Location"], headers=auth, timeout=30).json()
        assert done["status"] == "succeeded" and done["result"]["methods"]["gradient"]["scores"] == pytest.approx(
            second["methods"]["gradient"]["scores"], rel=1e-4, abs=1e-6)
