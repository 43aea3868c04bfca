"""The HTTP contract on both backends (SQLite + server-less broker; PostgreSQL + Redis), in-process."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from service.db import Job, utcnow

pytestmark = pytest.mark.postgres

TEXT = "A gripping, beautifully acted film."


def job_request(**over):
    return {"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"], **over}


def count_jobs(runtime, api) -> int:
    """This test's tenant's jobs (the Postgres database is shared by the whole session)."""
    from service.db import ApiKey

    with runtime.db.session() as s:
        tenant = s.get(ApiKey, api.key.split("_")[1]).tenant_id
        return s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant))


def queued_messages(runtime) -> int:
    """Messages waiting in the broker for the job queue (Redis list, or kombu's SQL table)."""
    with runtime.celery.connection_for_read() as conn:
        return conn.default_channel.queue_declare(runtime.settings.job_queue, passive=False).message_count


def is_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.data
    assert resp.content_type == "application/problem+json"
    body = resp.get_json(force=True)
    assert body["status"] == status and body["title"] and "detail" in body
    return body


def test_submit_answers_202_with_location_and_enqueues_the_id(api, runtime):
    resp = api.post("/v1/jobs", json=job_request())
    assert resp.status_code == 202
    doc = resp.get_json()
    assert doc["status"] == "queued" and doc["attempts"] == 0
    assert resp.headers["Location"] == f"/v1/jobs/{doc['id']}"
    assert int(resp.headers["Retry-After"]) >= 1
    assert doc["model"]["name"] == "minilm-rt" and len(doc["model"]["revision"]) == 64
    assert doc["request"]["params"]["gradient"]  # defaults filled in
    assert queued_messages(runtime) == 1
    got = api.get(resp.headers["Location"])
    assert got.status_code == 200 and got.get_json()["id"] == doc["id"]


def test_idempotency_key_replays_and_conflicts(api, runtime):
    first = api.post("/v1/jobs", json=job_request(), headers={"Idempotency-Key": "k1"})
    again = api.post("/v1/jobs", json=job_request(), headers={"Idempotency-Key": "k1"})
    assert again.status_code == 202 and again.get_json()["id"] == first.get_json()["id"]
    assert count_jobs(runtime, api) == 1 and queued_messages(runtime) == 1
    other = api.post("/v1/jobs", json=job_request(seed=3), headers={"Idempotency-Key": "k1"})
    is_problem(other, 409)
    assert count_jobs(runtime, api) == 1


def test_etag_and_304(api):
    job_id = api.post("/v1/jobs", json=job_request()).get_json()["id"]
    first = api.get(f"/v1/jobs/{job_id}")
    etag = first.headers["ETag"]
    assert api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag}).status_code == 304
    api.delete(f"/v1/jobs/{job_id}")
    changed = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_list_pages_newest_first_with_filters(api):
    ids = [api.post("/v1/jobs", json=job_request(seed=i)).get_json()["id"] for i in range(5)]
    api.delete(f"/v1/jobs/{ids[0]}")
    seen, cursor = [], None
    while True:
        page = api.get("/v1/jobs", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})}).get_json()
        assert all("result" not in item for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    cancelled = api.get("/v1/jobs", query_string={"status": "cancelled"}).get_json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert api.get("/v1/jobs", query_string={"model": "cnn-rt"}).get_json()["items"] == []
    is_problem(api.get("/v1/jobs", query_string={"cursor": "garbage"}), 400)
    is_problem(api.get("/v1/jobs", query_string={"limit": 0}), 422)


def test_cancel_queued_running_and_finished(api, runtime):
    queued = api.post("/v1/jobs", json=job_request(seed=1)).get_json()["id"]
    resp = api.delete(f"/v1/jobs/{queued}")
    assert resp.status_code == 202 and resp.get_json()["status"] == "cancelled"
    is_problem(api.delete(f"/v1/jobs/{queued}"), 409)

    running = api.post("/v1/jobs", json=job_request(seed=2)).get_json()["id"]
    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == running).values(status="running", lease_owner="w"))
    doc = api.delete(f"/v1/jobs/{running}").get_json()
    assert doc["status"] == "running" and doc["cancel_requested"] is True


def test_other_tenants_see_404(api, new_key):
    job_id = api.post("/v1/jobs", json=job_request()).get_json()["id"]
    other = api.as_(new_key("globex"))
    is_problem(other.get(f"/v1/jobs/{job_id}"), 404)
    is_problem(other.delete(f"/v1/jobs/{job_id}"), 404)
    is_problem(other.get(f"/v1/jobs/{job_id}/artifacts/result.json"), 404)
    assert other.get("/v1/jobs").get_json()["items"] == []
    is_problem(api.get("/v1/jobs/not-a-uuid"), 404)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc", "Bearer lt_abc_def"])
def test_bad_keys_are_401(api, header):
    headers = {"Authorization": header} if header else {}
    resp = api.client.get("/v1/jobs", headers=headers)
    body = is_problem(resp, 401)
    assert "Bearer" in resp.headers["WWW-Authenticate"] and body["detail"]


def test_expired_and_revoked_keys(api, runtime, new_key):
    from service.auth import revoke_key
    from service.db import ApiKey

    expired = new_key("initech", expires_days=1)
    with runtime.db.session() as s:
        s.execute(update(ApiKey).where(ApiKey.id == expired.split("_")[1])
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert "expired" in is_problem(api.as_(expired).get("/v1/jobs"), 401)["detail"]
    fresh = new_key("initech")  # made while the app runs: works at once
    assert api.as_(fresh).get("/v1/jobs").status_code == 200
    with runtime.db.session() as s:
        revoke_key(s, fresh.split("_")[1])
    assert "revoked" in is_problem(api.as_(fresh).get("/v1/jobs"), 401)["detail"]


def test_public_endpoints_need_no_key(api):
    for path in ("/healthz", "/readyz", "/metrics", "/v1/openapi.json"):
        assert api.client.get(path).status_code == 200, path
    spec = api.client.get("/v1/openapi.json").get_json()
    assert "/v1/jobs" in spec["paths"] and "/v1/jobs/{job_id}" in spec["paths"]
    metrics = api.client.get("/metrics").data.decode()
    assert "lantern_http_requests_total" in metrics and 'lantern_jobs{status="queued"}' in metrics


def test_methods_and_models(api):
    methods = {m["name"]: m for m in api.get("/v1/methods").get_json()["methods"]}
    assert methods["gradient"]["needs_head"] is True
    assert methods["gradient"]["params"]["type"] == "object"
    models = {m["name"] for m in api.get("/v1/models").get_json()["models"]}
    assert {"minilm-rt", "all-minilm-l6-v2"} <= models
    card = api.get("/v1/models/minilm-rt").get_json()
    assert card["layers"][0] == "embeddings" and card["layers"][-2:] == ["pool", "output"]
    assert "layer.6" in card["layers"] and card["labels"] == ["negative", "positive"]
    assert "lrp" in methods and "lrp" in card["methods"]  # lrp: models with rules (AttnLRP here)
    assert "lrp" not in api.get("/v1/models/all-minilm-l6-v2").get_json()["methods"]  # no head: no S(y)
    plain = api.get("/v1/models/all-minilm-l6-v2").get_json()
    assert plain["labels"] is None and "gradient" not in plain["methods"]
    is_problem(api.get("/v1/models/nope"), 404)


BAD = [
    ("malformed JSON", "{not json", 400, None),
    ("unknown model", job_request(model="gpt-17"), 422, "model"),
    ("unknown method", job_request(methods=["astrology"]), 422, "methods"),
    ("empty text", job_request(inputs={"text": "   "}), 422, "inputs"),
    ("no inputs", job_request(inputs={}), 422, "inputs"),
    ("text over the token limit", job_request(inputs={"text": "good " * 600}), 422, "inputs"),
    ("unknown layer", job_request(layers=["layer.99"]), 422, "layers"),
    ("unknown field", job_request(colour="blue"), 422, "colour"),
    ("non-finite param", '{"model": "minilm-rt", "inputs": {"text": "ok"}, "methods": ["smoothgrad"],'
                         ' "params": {"smoothgrad": {"noise": NaN}}}', 422, "params"),
    ("out-of-range param", job_request(methods=["smoothgrad"], params={"smoothgrad": {"samples": 10**9}}),
     422, "params"),
    ("param of a method not asked", job_request(params={"smoothgrad": {"samples": 3}}), 422, "params"),
    ("negative seed", job_request(seed=-1), 422, "seed"),
    ("unknown target", job_request(target="sarcastic"), 422, "target"),
    ("head method on a headless model", job_request(model="all-minilm-l6-v2"), 422, "methods"),
    ("duplicate methods", job_request(methods=["gradient", "gradient"]), 422, "methods"),
    ("method that does not apply (gating: ESIM only)", job_request(methods=["gating"]), 422, "methods"),
]


@pytest.mark.parametrize("name,body,status,field", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_problems_and_change_nothing(api, runtime, name, body, status, field):
    api.post("/v1/jobs", json=job_request())  # something stored already, which must stay as it is
    before_jobs, before_msgs = count_jobs(runtime, api), queued_messages(runtime)
    if isinstance(body, str):
        resp = api.post("/v1/jobs", data=body, content_type="application/json")
    else:
        resp = api.post("/v1/jobs", json=body)
    problem = is_problem(resp, status)
    if field:
        assert field in json.dumps(problem.get("errors", {})), problem
    assert count_jobs(runtime, api) == before_jobs and queued_messages(runtime) == before_msgs


def test_oversized_body_is_413(api, runtime):
    big = json.dumps(job_request(inputs={"text": "x" * (runtime.settings.max_body_bytes + 10)}))
    is_problem(api.post("/v1/jobs", data=big, content_type="application/json"), 413)
    assert count_jobs(runtime, api) == 0


def test_in_flight_limit_is_429(runtime, new_key, tmp_path):
    from dataclasses import replace

    from service.app import create_app
    from tests.helpers import Api

    runtime.settings = replace(runtime.settings, max_in_flight=2)
    api = Api(create_app(runtime=runtime), new_key("busy"))
    for seed in range(2):
        assert api.post("/v1/jobs", json=job_request(seed=seed)).status_code == 202
    resp = api.post("/v1/jobs", json=job_request(seed=9))
    is_problem(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1
    api.delete(f"/v1/jobs/{api.get('/v1/jobs').get_json()['items'][0]['id']}")
    assert api.post("/v1/jobs", json=job_request(seed=9)).status_code == 202


def test_rate_limit_is_429(runtime, new_key):
    from dataclasses import replace

    from service.app import create_app
    from tests.helpers import Api

    runtime.settings = replace(runtime.settings, rate_per_minute=3)
    api = Api(create_app(runtime=runtime), new_key("chatty"))
    for seed in range(3):
        job_id = api.post("/v1/jobs", json=job_request(seed=seed)).get_json()["id"]
        api.delete(f"/v1/jobs/{job_id}")  # not in flight: only the rate counts
    resp = api.post("/v1/jobs", json=job_request(seed=7))
    assert "a minute" in is_problem(resp, 429)["detail"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
