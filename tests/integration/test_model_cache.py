"""The API keeps no model weights: registration checks a bundle with an adapter outside the process's cache, and
the adapters that validate requests only tokenise. Workers fill the same bounded cache from object storage."""
from __future__ import annotations

import io
from dataclasses import replace

import pytest

from worker import models
from worker.models import bundle_dir
from worker.models.bundle import CACHE_MARKER
from worker.models.cache import DEFAULT_LIMIT

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def empty_cache():
    models.clear_cache()  # what earlier tests in this process loaded is not the API's doing
    yield
    models.set_cache_limit(DEFAULT_LIMIT)
    models.clear_cache()


def register(api, name: str, zoo_model: str) -> dict:
    root = bundle_dir(zoo_model)
    files = [(io.BytesIO(p.read_bytes()), p.relative_to(root).as_posix()) for p in sorted(root.rglob("*"))
             if p.is_file()]
    resp = api.post("/v1/models", data={"name": name, "files": files}, content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def submit_every_method(api, name: str, methods: list[str]) -> list[str]:
    """Jobs asking for every method that applies (each method's own checks run against the adapter)."""
    ids = []
    for start in range(0, len(methods), 8):
        resp = api.post("/v1/jobs", json={"model": name, "inputs": {"text": "A wonderful film."},
                                          "methods": methods[start:start + 8]})
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["id"])
    return ids


def loaded_revisions() -> list[str]:
    return [revision for revision, adapter in models._cache.items() if adapter.loaded]


def test_the_api_process_holds_no_weights_after_registering_and_validating(api):
    cards = {name: register(api, name, zoo) for name, zoo in (("mine-hf", "minilm-rt"), ("mine-cnn", "cnn-rt"))}
    assert len(models._cache) == 0  # the smoke-tested adapters are gone with the request
    for name, card in cards.items():
        assert api.get(f"/v1/models/{name}").status_code == 200
        submit_every_method(api, name, card["methods"])
    audit = api.post("/v1/audits", json={"models": ["mine-hf", "mine-cnn"], "methods": ["gradient", "occlusion"],
                                         "corpus": {"items": [{"text": "Fine.", "label": "positive"}]}})
    assert audit.status_code == 202, audit.get_json()
    assert sorted(revision for revision, _ in models._cache.items()) == sorted(c["revision"] for c in cards.values())
    assert loaded_revisions() == []


def test_a_model_that_reads_only_pairs_registers_and_holds_no_weights(api):
    card = register(api, "mine-nli", "esim-50")
    pair = {"premise": "A man sleeps.", "hypothesis": "A person rests."}
    resp = api.post("/v1/jobs", json={"model": "mine-nli", "inputs": pair, "methods": ["gradient"]})
    assert resp.status_code == 202, resp.get_json()
    assert [r for r, _ in models._cache.items()] == [card["revision"]] and loaded_revisions() == []


def test_a_worker_runs_a_registered_model_from_its_own_copy_and_keeps_it_loaded(api, runtime, tmp_path):
    from service.runtime import Runtime
    from worker.runner import run_job

    card = register(api, "mine", "cnn-rt")
    job = api.post("/v1/jobs", json={"model": "mine", "inputs": {"text": "A wonderful film."},
                                     "methods": ["gradient"]}).get_json()
    models.clear_cache()  # as in a worker process of its own
    own = runtime.settings
    worker = Runtime(replace(own, data_dir=str(tmp_path / "worker"), database_url=own.db_url, storage_url=own.storage,
                             broker_url=own.broker))
    try:
        assert run_job(worker, job["id"], "w") == "succeeded"
    finally:
        worker.close()
    copies = tmp_path / "worker" / "model-cache"
    assert [p.name for p in copies.iterdir()] == [card["revision"]]  # no half-written copy left beside it
    assert (copies / card["revision"] / CACHE_MARKER).is_file()
    assert loaded_revisions() == [card["revision"]]


def test_the_runtime_bounds_the_process_cache_with_its_setting(runtime):
    from service.runtime import Runtime

    small = Runtime(replace(runtime.settings, model_cache_size=2))
    small.adapters.get(_zoo_ref("cnn-rt"))
    assert models._cache.limit == 2
    for name in ("esim-50", "bilstm-rt"):
        small.adapters.get(_zoo_ref(name))
    assert [a.name for _, a in models._cache.items()] == ["esim-50", "bilstm-rt"]


def test_a_cache_size_below_one_is_refused(tmp_path):
    from service.config import Settings

    with pytest.raises(ValueError, match="LANTERN_MODEL_CACHE_SIZE"):
        Settings.from_env(env={"LANTERN_MODEL_CACHE_SIZE": "0"}, data_dir=str(tmp_path))


def _zoo_ref(name: str):
    from service.models import ModelRef
    from worker.models import bundle_revision

    return ModelRef(name, bundle_revision(bundle_dir(name)), True)

