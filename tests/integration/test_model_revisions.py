"""A revision is the content of every byte a loader may read: two different bundles never share one, so one tenant's
job never runs on another tenant's weights (issue 14, defect 1). Uploaded safetensors are parsed at registration."""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from worker.models import bundle_dir

pytestmark = pytest.mark.postgres


def hidden_weights_bundle(dest: Path, flip: bool = False, weights: str = ".w/model.safetensors") -> Path:
    """cnn-rt with its weights in a dot-folder the config points at; `flip` negates the output layer, so the
    same text gets the other label with the same probability."""
    shutil.copytree(bundle_dir("cnn-rt"), dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, "weights": weights}))
    tensors = load_file(dest / "model.safetensors")
    if flip:
        tensors = {k: -v if k.startswith("output.") else v for k, v in tensors.items()}
    (dest / "model.safetensors").unlink()
    (dest / weights).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, dest / weights)
    return dest


def files_of(root: Path) -> list:
    return [(io.BytesIO(p.read_bytes()), p.relative_to(root).as_posix())
            for p in sorted(root.rglob("*")) if p.is_file()]


def upload(api, name: str, root: Path):
    return api.post("/v1/models", data={"name": name, "files": files_of(root)}, content_type="multipart/form-data")


def label_of(api, runtime, model: str) -> tuple[str, float]:
    from worker.runner import run_job

    job = api.post("/v1/jobs", json={"model": model, "inputs": {"text": "A wonderful, moving film."},
                                     "methods": ["gradient"]}).get_json()
    assert run_job(runtime, job["id"], "w") == "succeeded"
    prediction = api.get(f"/v1/jobs/{job['id']}").get_json()["result"]["prediction"]
    return prediction["label"], prediction["probabilities"][prediction["label"]]


def test_uploads_differing_only_in_a_dot_file_are_different_models(api, runtime, new_key, tmp_path):
    mine = hidden_weights_bundle(tmp_path / "a")
    theirs = hidden_weights_bundle(tmp_path / "b", flip=True)
    other = api.as_(new_key("globex"))
    a, b = upload(api, "sentiment", mine), upload(other, "sentiment", theirs)
    assert a.status_code == b.status_code == 201, (a.get_json(), b.get_json())
    assert a.get_json()["revision"] != b.get_json()["revision"]

    label_a, p_a = label_of(api, runtime, "sentiment")
    label_b, p_b = label_of(other, runtime, "sentiment")
    assert {label_a, label_b} == {"negative", "positive"} and p_a == pytest.approx(p_b, abs=1e-5)

    # the same tenant re-registering changed dot-file content gets a new revision, not "already registered"
    again = upload(api, "sentiment", theirs)
    assert again.status_code == 201 and again.get_json()["revision"] == b.get_json()["revision"]


def test_server_paths_differing_only_in_a_dot_file_are_different_models(api, runtime, new_key, tmp_path):
    root = tmp_path / "models"
    hidden_weights_bundle(root / "plain")
    hidden_weights_bundle(root / "flipped", flip=True)
    runtime.settings = replace(runtime.settings, model_root=str(root))
    other = api.as_(new_key("globex"))
    a = api.post("/v1/models", json={"name": "srv", "path": "plain"})
    b = other.post("/v1/models", json={"name": "srv", "path": "flipped"})
    assert a.status_code == b.status_code == 201, (a.get_json(), b.get_json())
    assert a.get_json()["revision"] != b.get_json()["revision"]
    assert label_of(api, runtime, "srv")[0] != label_of(other, runtime, "srv")[0]


@pytest.mark.parametrize("weights", [".git/model.safetensors", "__pycache__/model.safetensors", ".complete"])
def test_configs_naming_unhashed_paths_are_refused(api, tmp_path, weights):
    resp = upload(api, "sneaky", hidden_weights_bundle(tmp_path / "b", weights=weights))
    assert resp.status_code == 422 and resp.content_type == "application/problem+json", resp.get_json()
    assert "model content" in resp.get_json()["detail"]


def _rewrite_weights(root: Path, data: bytes) -> Path:
    (root / "model.safetensors").write_bytes(data)
    return root


@pytest.mark.parametrize("case", ["pickle", "truncated", "header too long", "gap", "wrong size"])
def test_uploaded_safetensors_are_parsed_at_registration(api, tmp_path, case):
    import pickle
    import struct

    root = tmp_path / "b"
    shutil.copytree(bundle_dir("cnn-rt"), root)
    good = (root / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8:8 + length])
    name = "output.bias"
    begin, end = header[name]["data_offsets"]

    def with_header(h: dict) -> bytes:
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + good[8 + length:]

    data = {
        "pickle": pickle.dumps({"weights": [1.0, 2.0]}),
        "truncated": good[:-100],
        "header too long": struct.pack("<Q", 10**12) + good[8:],
        "gap": with_header({**header, name: {**header[name], "data_offsets": [begin + 4, end + 4]}}),
        "wrong size": with_header({**header, name: {**header[name], "shape": [3]}}),
    }[case]
    resp = upload(api, "evil", _rewrite_weights(root, data))
    assert resp.status_code == 422 and resp.content_type == "application/problem+json", resp.get_json()
    assert "safetensors" in resp.get_json()["detail"]
    assert "evil" not in [m["name"] for m in api.get("/v1/models").get_json()["models"]]


@pytest.fixture
def fresh_db(backend, tmp_path, request):
    """A database at no schema version (the session's PostgreSQL database is already at head)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    import uuid

    import psycopg

    base = request.getfixturevalue("pg_url")
    name = f"lantern_mig_{uuid.uuid4().hex[:8]}"
    admin = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migration_reidentifies_registered_models(fresh_db, tmp_path):
    """Rows registered under the old hash: a valid bundle keeps its revision; one whose config pointed at a
    dot-file (never stored before) is withdrawn and its waiting job fails with a 409 saying so."""
    import uuid

    from sqlalchemy import select, text

    from service.auth import create_key
    from service.db import Database, Job, Model, Tenant, utcnow
    from service.migrate import upgrade
    from service.registry import register
    from service.storage import open_store

    upgrade(fresh_db, "0001")
    store = open_store((tmp_path / "objects").as_uri())
    db = Database(fresh_db)
    try:
        with db.session() as s:
            create_key(s, "old-tenant")
        with db.session() as s:
            tenant = s.scalar(select(Tenant.id).where(Tenant.name == "old-tenant"))
            good, _ = register(s, store, tenant, "good", bundle_dir("cnn-rt"))
            broken, _ = register(s, store, tenant, "broken", hidden_weights_bundle(tmp_path / "h"))
            good_rev, broken_rev, broken_key = good.revision, broken.revision, broken.storage_key
        for key in store.list(broken_key):  # what the old registry stored: no dot-files
            if "/." in key:
                store.delete(key)
        job_id = str(uuid.uuid4())
        with db.session() as s:  # the 0001 columns only (the model class has later ones)
            s.execute(text("INSERT INTO jobs (id, tenant_id, kind, status, model_name, model_revision, request, "
                           "request_hash, queue, progress, attempts, cancel_requested, created_at, updated_at) "
                           "VALUES (:id, :t, 'explain', 'queued', 'broken', :rev, '{}', 'x', 'cpu', 0, 0, false, "
                           ":now, :now)"), {"id": job_id, "t": tenant, "rev": broken_rev, "now": utcnow()})

        upgrade(fresh_db, store=store)

        with db.session() as s:
            rows = {m.name: m.revision for m in s.scalars(select(Model).where(Model.tenant_id == tenant))}
            failed = s.get(Job, job_id)
            assert rows == {"good": good_rev}
            assert failed.status == "failed" and failed.error["status"] == 409
            assert "register it again" in failed.error["detail"]
        assert store.list(broken_key) == []
    finally:
        db.dispose()


def test_an_audit_of_a_registered_model_runs_in_a_fresh_worker(api, runtime, tmp_path):
    """The worker process has no adapter cached: it finds the tenant's registration and fetches its files."""
    from sqlalchemy import select

    from service.db import AuditItem, Job
    from service.runtime import Runtime
    from worker.runner import run_job

    assert upload(api, "mine", hidden_weights_bundle(tmp_path / "b")).status_code == 201
    audit = api.post("/v1/audits", json={"model": "mine", "methods": ["gradient"], "corpus": {"items": [
        {"text": "A wonderful film.", "label": "positive"}, {"text": "Dull and slow.", "label": "negative"}]}})
    assert audit.status_code == 202, audit.get_json()
    own = runtime.settings  # the same database, broker and store; its own data dir, so its own model cache
    worker = Runtime(replace(own, data_dir=str(tmp_path / "worker"), database_url=own.db_url,
                             storage_url=own.storage, broker_url=own.broker))
    try:
        with runtime.db.session() as s:
            batches = list(s.scalars(select(Job.id).where(Job.audit_id == audit.get_json()["id"],
                                                          Job.kind == "audit_batch")))
        assert batches and all(run_job(worker, b, "w") == "succeeded" for b in batches)
        with runtime.db.session() as s:
            statuses = list(s.scalars(select(AuditItem.status).where(AuditItem.audit_id == audit.get_json()["id"])))
        assert statuses == ["done", "done"]
    finally:
        worker.close()


def test_the_migrations_build_the_schema_the_code_declares(fresh_db):
    """`lantern migrate` and service.db's tables agree (columns, types, indexes, constraints): a table, column or
    index declared without its migration (or the other way round) is a difference here, on SQLite and PostgreSQL."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from service.db import Base
    from service.migrate import upgrade

    upgrade(fresh_db)
    engine = create_engine(fresh_db)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()
