"""The HTTP edge (issue 14): every input the API can parse gets a 4xx problem+json or a result, never a 500, and
nothing is stored for a refused request. Through the real app on both backends."""
from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from service.db import ApiKey, Audit, Model, Upload
from tests.integration.test_api import count_jobs, is_problem, job_request

pytestmark = pytest.mark.postgres

SURROGATE = "good \ud800 film"


def stored(runtime, api, table) -> int:
    """Rows of this test's tenant (the Postgres database is shared by the whole session)."""
    with runtime.db.session() as s:
        tenant = s.get(ApiKey, api.key.split("_")[1]).tenant_id
        return s.scalar(select(func.count()).select_from(table).where(table.tenant_id == tenant))


def raw_json(api, path: str, text: str, **headers):
    """Send the body exactly as written (json= would refuse to encode a lone surrogate)."""
    return api.post(path, data=text.encode(), content_type="application/json", headers=headers)


def upload(api, content: bytes, name: str = "corpus.jsonl"):
    return api.post("/v1/audits/uploads", data={"file": (io.BytesIO(content), name)},
                    content_type="multipart/form-data")


def audit_request(**over):
    return {"model": "minilm-rt", "methods": ["gradient"],
            "corpus": {"items": [{"text": "A fine film.", "label": "positive"}]}, **over}


# --- invalid text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    job_request(inputs={"text": SURROGATE}),
    job_request(model="\ud800"),
    job_request(inputs={"premise": "A man \udfff sleeps.", "hypothesis": "A person rests."}),
    job_request(inputs={"text": "nul \x00 byte"}),
    job_request(params={"gradient": {"\ud800": 1}}),
], ids=["text", "model", "premise", "nul", "params-key"])
def test_invalid_text_in_a_job_is_422(api, runtime, body):
    resp = raw_json(api, "/v1/jobs", json.dumps(body))  # json.dumps writes the surrogate as \ud800
    problem = is_problem(resp, 422)
    assert "invalid text" in problem["detail"] and problem["errors"]
    assert count_jobs(runtime, api) == 0


@pytest.mark.parametrize("items", [[{"text": SURROGATE}], [{"text": "fine", "label": "pos\udc00"}]],
                         ids=["item", "label"])
def test_invalid_text_in_an_audit_is_422(api, runtime, items):
    resp = raw_json(api, "/v1/audits", json.dumps(audit_request(corpus={"items": items})))
    assert "invalid text" in is_problem(resp, 422)["detail"]
    assert stored(runtime, api, Audit) == 0


def test_an_upload_holding_a_lone_surrogate_is_422_not_stored(api, runtime):
    lines = [json.dumps({"text": "A fine film.", "label": "positive"}), json.dumps({"text": SURROGATE})]
    resp = upload(api, "\n".join(lines).encode())
    problem = is_problem(resp, 422)
    assert "line 2" in problem["detail"] and "invalid text" in problem["detail"]
    assert stored(runtime, api, Upload) == 0


def test_an_upload_with_a_bare_carriage_return_is_422(api, runtime):
    is_problem(upload(api, b"\xca\xa0\r_", "corpus.csv"), 422)
    assert stored(runtime, api, Upload) == 0


def test_nul_in_a_query_or_path_value_is_422(api):
    is_problem(api.get("/v1/jobs?model=a%00b"), 422)
    is_problem(api.get("/v1/models/a%00b"), 422)


# --- nesting depth ------------------------------------------------------------------------------------------


def test_json_nested_2000_deep_is_400(api, runtime):
    deep = "[" * 2000 + "]" * 2000
    body = json.dumps(job_request())[:-1] + f', "params": {{"gradient": {{"x": {deep}}}}}}}'
    resp = raw_json(api, "/v1/jobs", body)
    assert "nested" in is_problem(resp, 400)["detail"]
    assert count_jobs(runtime, api) == 0


def test_json_nested_past_the_limit_but_parseable_is_400(api, runtime):
    from service.api.guard import MAX_DEPTH

    value: object = 1
    for _ in range(MAX_DEPTH):
        value = [value]
    resp = raw_json(api, "/v1/jobs", json.dumps(job_request(params={"gradient": {"x": value}})))
    assert "nested" in is_problem(resp, 400)["detail"]
    assert count_jobs(runtime, api) == 0


def test_an_upload_nested_2000_deep_is_400_not_stored(api, runtime):
    line = '{"text": "fine", "label": ' + "[" * 2000 + "]" * 2000 + "}"
    assert "nested" in is_problem(upload(api, line.encode()), 400)["detail"]
    assert stored(runtime, api, Upload) == 0


# --- model registration fields ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"name": "m", "path": 5}, {"name": ["x"], "path": "b"},
                                  {"name": "m"}, {"name": "m", "path": "b", "extra": 1},
                                  {"name": "m", "path": "a" * 300}],
                         ids=["path-int", "name-list", "no-path", "extra", "long-part"])
def test_registration_json_fields_are_typed(api, runtime, body):
    runtime.settings = replace(runtime.settings, model_root=str(runtime.settings.data_path))  # the old 500 path
    resp = api.post("/v1/models", json=body)
    problem = is_problem(resp, 422)
    assert problem["errors"]
    assert stored(runtime, api, Model) == 0


def test_registration_form_needs_a_name_and_other_bodies_are_415(api, runtime):
    form = api.post("/v1/models", data={"files": (io.BytesIO(b"{}"), "config.json")},
                    content_type="multipart/form-data")
    assert "name" in is_problem(form, 422)["errors"]
    is_problem(api.post("/v1/models", data="name=x", content_type="text/plain"), 415)
    assert stored(runtime, api, Model) == 0


# --- headers, query parameters, methods ---------------------------------------------------------------------


def test_idempotency_key_over_200_characters_is_422(api, runtime):
    resp = api.post("/v1/jobs", json=job_request(), headers={"Idempotency-Key": "k" * 201})
    assert "Idempotency-Key" in is_problem(resp, 422)["errors"]["headers"]
    assert count_jobs(runtime, api) == 0
    ok = api.post("/v1/jobs", json=job_request(), headers={"Idempotency-Key": "k" * 200})
    assert ok.status_code == 202


def test_oversized_headers_are_431_problem_json(api, runtime):
    resp = api.post("/v1/jobs", json=job_request(), headers={"X-Padding": "p" * 20_000})
    is_problem(resp, 431)
    assert count_jobs(runtime, api) == 0


@pytest.mark.parametrize("path", ["/v1/jobs?limit=5&colour=red", "/v1/models?colour=red",
                                  "/v1/methods?colour=red", "/v1/jobs/x?colour=red"])
def test_unknown_query_parameters_are_422_naming_them(api, path):
    problem = is_problem(api.get(path), 422)
    assert "colour" in problem["detail"] and "limit" not in problem["detail"]


def test_unknown_query_parameter_on_a_submit_stores_nothing(api, runtime):
    is_problem(api.post("/v1/jobs?dry=1", json=job_request()), 422)
    assert count_jobs(runtime, api) == 0


def test_options_and_allow_say_what_the_route_answers(api):
    options = api.client.open("/v1/audits/uploads", method="OPTIONS")
    assert set(options.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    for method in ("GET", "DELETE", "PUT"):
        resp = api.client.open("/v1/audits/uploads", method=method, headers=api._h(None))
        is_problem(resp, 405)
        assert set(resp.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    audit = api.client.open("/v1/audits/some-id", method="OPTIONS")
    assert {"GET", "DELETE"} <= set(audit.headers["Allow"].split(", "))


def test_keys_create_refuses_expires_zero(tmp_path, monkeypatch):
    from service.cli import main

    for var in ("LANTERN_DATABASE_URL", "LANTERN_BROKER_URL", "LANTERN_STORAGE_URL"):
        monkeypatch.delenv(var, raising=False)
    data = str(tmp_path / "data")
    for bad in ("0", "-1", "nan"):
        result = CliRunner().invoke(main, ["keys", "create", "--tenant", "a", "--data-dir", data, "--expires", bad])
        assert result.exit_code == 2 and "never expires" in result.output
    never = CliRunner().invoke(main, ["keys", "create", "--tenant", "a", "--data-dir", data])
    assert never.exit_code == 0 and "expires" not in never.output.splitlines()[0]


def test_create_key_refuses_a_zero_expiry(runtime):
    from service.auth import create_key

    with runtime.db.session() as s, pytest.raises(ValueError, match="never expires"):
        create_key(s, "zero", expires_days=0)


# --- the OpenAPI document ------------------------------------------------------------------------------------


def test_every_error_response_is_documented_as_problem_json(api):
    spec = api.get("/v1/openapi.json").get_json()
    for path, ops in spec["paths"].items():
        for method, op in ((m, op) for m, op in ops.items() if m != "parameters"):
            errors = {code for code in op["responses"] if code.startswith(("4", "5"))}
            assert {"401", "422"} <= errors, (method, path)
            for code in errors:
                ref = op["responses"][code]["$ref"].rsplit("/", 1)[1]
                content = spec["components"]["responses"][ref]["content"]
                assert list(content) == ["application/problem+json"], (method, path, code)


def test_request_schemas_refuse_what_the_server_refuses(api):
    from jsonschema import Draft202012Validator

    spec = api.get("/v1/openapi.json").get_json()

    def valid(name: str, doc: dict) -> bool:
        schema = {**spec["components"]["schemas"][name], "components": spec["components"]}  # refs resolve here
        return Draft202012Validator(schema).is_valid(doc)

    assert valid("JobRequest", job_request())
    assert not valid("JobRequest", job_request(inputs={}))
    assert not valid("JobRequest", job_request(inputs={"text": "  "}))
    assert not valid("JobRequest", job_request(inputs={"text": "a", "premise": "b", "hypothesis": "c"}))
    assert valid("AuditRequest", audit_request())
    assert not valid("AuditRequest", audit_request(corpus={}))
    assert not valid("AuditRequest", audit_request(corpus={"name": "rt-test", "upload": "u"}))
    assert not valid("AuditRequest", audit_request(models=["minilm-rt"]))
    for refused in (job_request(inputs={}), audit_request(corpus={})):  # and the server agrees
        path = "/v1/jobs" if "inputs" in refused else "/v1/audits"
        is_problem(api.post(path, json=refused), 422)

