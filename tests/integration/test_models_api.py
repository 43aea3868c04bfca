"""Registering user bundles over the API: validated on upload, immutable revisions, tenant-private, and usable
by jobs (the worker fetches the files from object storage)."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from worker.models import bundle_dir

pytestmark = pytest.mark.postgres


def bundle_files(root: Path, **config_over) -> list:
    config = json.loads((root / "config.json").read_text())
    config.update(config_over)
    files = [(io.BytesIO(json.dumps(config).encode()), "config.json")]
    for p in sorted(root.iterdir()):
        if p.name != "config.json" and p.is_file():
            files.append((io.BytesIO(p.read_bytes()), p.name))
    return files


def upload(api, name: str, files: list):
    return api.post("/v1/models", data={"name": name, "files": files}, content_type="multipart/form-data")


def test_register_describe_and_run(api, runtime, new_key):
    resp = upload(api, "my-sentiment", bundle_files(bundle_dir("minilm-rt")))
    assert resp.status_code == 201, resp.get_json()
    card = resp.get_json()
    assert card["layers"][-1] == "output" and len(card["revision"]) == 64
    again = upload(api, "my-sentiment", bundle_files(bundle_dir("minilm-rt")))
    assert again.status_code == 200 and again.get_json()["revision"] == card["revision"]
    changed = upload(api, "my-sentiment", bundle_files(bundle_dir("minilm-rt"), description="v2"))
    assert changed.status_code == 201 and changed.get_json()["revision"] != card["revision"]

    names = [m["name"] for m in api.get("/v1/models").get_json()["models"]]
    assert names.count("my-sentiment") == 2
    assert api.get("/v1/models/my-sentiment").get_json()["revision"] == changed.get_json()["revision"]
    other = api.as_(new_key("globex"))
    assert other.get("/v1/models/my-sentiment").status_code == 404
    assert other.post("/v1/jobs", json={"model": "my-sentiment", "inputs": {"text": "ok"},
                                        "methods": ["gradient"]}).status_code == 422

    job = api.post("/v1/jobs", json={"model": "my-sentiment", "inputs": {"text": "A wonderful film."},
                                     "methods": ["gradient"]}).get_json()
    from worker.runner import run_job

    assert run_job(runtime, job["id"], "w") == "succeeded"
    done = api.get(f"/v1/jobs/{job['id']}").get_json()
    assert done["result"]["prediction"]["label"] == "positive"
    assert done["model"]["revision"] == changed.get_json()["revision"]


@pytest.mark.parametrize("case", ["pickle", "remote code", "bad shapes", "no config", "bad path", "zoo name",
                                  "bad name"])
def test_bad_bundles_are_refused(api, case, tmp_path):
    root = bundle_dir("minilm-rt")
    name, files = "mine", bundle_files(root)
    if case == "pickle":
        files.append((io.BytesIO(b"\x80\x04K\x01."), "weights.bin"))
    elif case == "remote code":
        files = bundle_files(root, auto_map={"AutoModel": "x.Model"})
    elif case == "bad shapes":
        files = bundle_files(root, head={**json.loads((root / "config.json").read_text())["head"],
                                         "hidden_size": 17})
    elif case == "no config":
        files = [f for f in files if f[1] != "config.json"]
    elif case == "bad path":
        files.append((io.BytesIO(b"x"), "../../etc/passwd"))
    elif case == "zoo name":
        name = "minilm-rt"
    elif case == "bad name":
        name = "../Nope"
    resp = upload(api, name, files)
    assert resp.status_code in (409, 422), resp.get_json()
    assert resp.content_type == "application/problem+json" and resp.get_json()["detail"]
    assert "mine" not in [m["name"] for m in api.get("/v1/models").get_json()["models"]]


def test_server_side_paths_only_under_the_root(api, runtime, tmp_path):
    from dataclasses import replace

    payload = {"name": "srv", "path": "minilm-rt"}
    assert api.post("/v1/models", json=payload).status_code == 403  # no root configured
    root = tmp_path / "models"
    shutil.copytree(bundle_dir("minilm-rt"), root / "minilm-rt")
    runtime.settings = replace(runtime.settings, model_root=str(root))
    assert api.post("/v1/models", json={"name": "srv", "path": "../../etc"}).status_code == 403
    resp = api.post("/v1/models", json=payload)
    assert resp.status_code == 201, resp.get_json()
