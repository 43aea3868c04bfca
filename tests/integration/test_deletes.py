"""DELETE for registered models and corpus uploads (issue 16, data lifecycle): rows and stored objects go
together, nothing a live job needs is deleted, and another tenant's things are not found."""
from __future__ import annotations

import io

import pytest
from sqlalchemy import update

from service.db import Job
from tests.integration.test_model_revisions import upload
from worker.models import bundle_dir

pytestmark = pytest.mark.postgres


def test_a_model_in_use_is_kept_and_deleted_once_free(api, runtime, new_key):
    created = upload(api, "mine", bundle_dir("cnn-rt"))
    assert created.status_code == 201
    revision = created.get_json()["revision"]
    job = api.post("/v1/jobs", json={"model": "mine", "inputs": {"text": "Fine."}, "methods": ["gradient"]})
    assert job.status_code == 202

    busy = api.delete("/v1/models/mine")
    assert busy.status_code == 409 and busy.content_type == "application/problem+json"
    assert api.get("/v1/models/mine").status_code == 200
    assert api.as_(new_key("globex")).delete("/v1/models/mine").status_code == 404

    with runtime.db.session() as s:
        s.execute(update(Job).where(Job.id == job.get_json()["id"]).values(status="succeeded"))
    stored = runtime.store.list("models/")
    assert any(revision in key for key in stored)
    assert api.delete(f"/v1/models/mine?revision={'0' * 64}").status_code == 404
    assert api.delete(f"/v1/models/mine?revision={revision}").status_code == 204
    assert api.get("/v1/models/mine").status_code == 404
    assert not any(revision in key for key in runtime.store.list("models/"))
    assert api.get(f"/v1/jobs/{job.get_json()['id']}").get_json()["model"]["revision"] == revision


def test_zoo_models_cannot_be_deleted(api):
    resp = api.delete("/v1/models/cnn-rt")
    assert resp.status_code == 409 and "built-in" in resp.get_json()["detail"]


def test_an_upload_is_deleted_with_its_file(api, runtime, new_key):
    resp = api.post("/v1/audits/uploads", data={"file": (io.BytesIO(b'{"text": "Fine.", "label": "positive"}\n'),
                                                         "c.jsonl")}, content_type="multipart/form-data")
    assert resp.status_code == 201
    upload_id = resp.get_json()["upload"]
    assert len(runtime.store.list("uploads/")) == 1
    assert api.as_(new_key("globex")).delete(f"/v1/audits/uploads/{upload_id}").status_code == 404
    assert api.delete(f"/v1/audits/uploads/{upload_id}").status_code == 204
    assert runtime.store.list("uploads/") == []
    assert api.delete(f"/v1/audits/uploads/{upload_id}").status_code == 404
    audit = api.post("/v1/audits", json={"model": "cnn-rt", "methods": ["gradient"], "corpus": {"upload": upload_id}})
    assert audit.status_code == 422
