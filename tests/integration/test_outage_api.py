"""With the database unreachable the API answers 503 problem+json with Retry-After, never 500, authentication
included (an unknown key cannot be judged, so it is not a 401); liveness stays 200, readiness says 503
(issue 16, defect 3). The chaos tests stop a real PostgreSQL under load; this one points at a closed port."""
from __future__ import annotations

import pytest

from tests.helpers import Api, free_port, make_settings


@pytest.fixture
def down_api(tmp_path):
    from service.app import create_app
    from service.auth import PREFIX

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    settings = make_settings(tmp_path, database_url=url)
    return Api(create_app(settings), f"{PREFIX}0123456789ab_unknownsecret")


@pytest.mark.parametrize("call", [
    lambda api: api.get("/v1/jobs"),
    lambda api: api.get("/v1/jobs/00000000-0000-0000-0000-000000000000"),
    lambda api: api.post("/v1/jobs", json={"model": "cnn-rt", "inputs": {"text": "fine"}, "methods": ["gradient"]}),
    lambda api: api.get("/v1/models"),
    lambda api: api.get("/v1/audits/00000000-0000-0000-0000-000000000000"),
])
def test_every_call_is_503_with_retry_after(down_api, call):
    resp = call(down_api)
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json" and int(resp.headers["Retry-After"]) >= 1
    assert "database" in resp.get_json()["detail"]


def test_a_database_that_never_answers_is_503_within_the_connect_timeout(tmp_path, monkeypatch):
    """A server that takes the connection and never answers (a host gone from the network looks the same from
    here): the request gives up after the connect timeout with its 503, not after TCP's ~2 minutes."""
    import socket
    import threading
    import time

    from service import db
    from service.app import create_app
    from service.auth import PREFIX

    monkeypatch.setattr(db, "CONNECT_TIMEOUT_SECONDS", 1)
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)  # (it would win over the default)
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)  # the kernel completes handshakes; nobody replies
    answers = []
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/postgres"
        api = Api(create_app(make_settings(tmp_path, database_url=url)), f"{PREFIX}0123456789ab_unknownsecret")
        started = time.monotonic()
        asking = threading.Thread(target=lambda: answers.append(api.get("/v1/jobs")), daemon=True)
        asking.start()
        asking.join(30)  # without a connect timeout it waits for an answer that never comes
        waited = time.monotonic() - started
    finally:
        silent.close()
    assert answers, f"no answer after {waited:.0f} s"
    assert answers[0].status_code == 503 and int(answers[0].headers["Retry-After"]) >= 1, answers[0].get_json()


def test_liveness_stays_up_readiness_says_why(down_api):
    assert down_api.client.get("/healthz").status_code == 200
    ready = down_api.client.get("/readyz")
    assert ready.status_code == 503 and "database" in ready.get_json()["errors"]["checks"]
    assert ready.get_json()["errors"]["checks"]["database"] != "ok"


def test_a_missing_key_is_still_401(down_api):
    assert down_api.client.get("/v1/jobs").status_code == 401  # judged without the database


def test_a_full_store_answers_507_for_uploads_and_registrations(tmp_path):
    """Storing an upload or a model on a full store is the store's condition, not a bug: 507, nothing kept."""
    import io

    from service.app import create_app
    from service.runtime import Runtime
    from tests.helpers import small_disk
    from tests.integration.test_models_api import bundle_files
    from worker.models import bundle_dir

    with small_disk("256k") as disk:
        settings = make_settings(tmp_path, storage_url=(disk / "objects").as_uri())
        runtime = Runtime(settings)
        from service.migrate import upgrade

        upgrade(settings.db_url)
        from service.auth import create_key

        with runtime.db.session() as s:
            key = create_key(s, "full")[1]
        api = Api(create_app(runtime=runtime), key)
        corpus = b"".join(b'{"text": "%d fine words here", "label": "positive"}\n' % i for i in range(9000))
        resp = api.post("/v1/audits/uploads", data={"file": (io.BytesIO(corpus), "c.jsonl")},
                        content_type="multipart/form-data")
        assert resp.status_code == 507 and resp.content_type == "application/problem+json", resp.get_data()
        model = api.post("/v1/models", data={"name": "big", "files": bundle_files(bundle_dir("cnn-rt"))},
                         content_type="multipart/form-data")
        assert model.status_code == 507, model.get_data(as_text=True)[:300]
        assert not [p for p in disk.rglob("*") if p.is_file()]  # nothing half-written left behind
        runtime.close()
