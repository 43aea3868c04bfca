"""End to end, with real processes: gunicorn API (2 workers) + 2 Celery worker processes + PostgreSQL + Redis +
an S3 server (moto) — the production shape; and the embedded default (`lantern demo`)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest
from sqlalchemy import select

from service.db import Job
from tests.helpers import LANTERN, is_ancestor, production_stack
from tests.helpers import wait_for as _wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, tmp_path_factory):
    with production_stack(pg_url, redis_url, tmp_path_factory.mktemp("stack")) as st:
        yield st


def test_a_job_runs_end_to_end(stack, tmp_path):
    request = {"model": "minilm-rt", "inputs": {"text": "A gripping, beautifully acted film."},
               "methods": ["gradient"]}
    job = stack.client.wait(stack.client.submit(request), timeout=240)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 1 and job["progress"] == 1.0 and job["device"] == "cpu"
    result = job["result"]
    assert result["prediction"]["label"] == "positive"
    assert len(result["methods"]["gradient"]["scores"]) == len(result["tokens"])
    names = {a["name"] for a in job["artifacts"]}
    assert {"gradient.png", "gradient.safetensors", "result.json"} <= names
    resp = stack.client.session.get(f"{stack.url}/v1/jobs/{job['id']}/artifacts/gradient.png",
                                    allow_redirects=False)
    assert resp.status_code == 302 and resp.headers["Location"].startswith(stack.env["LANTERN_S3_ENDPOINT_URL"])
    png = stack.client.download(job["id"], "gradient.png", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from safetensors.torch import load_file

    tensors = load_file(stack.client.download(job["id"], "gradient.safetensors", tmp_path))
    assert tensors["scores"].shape[0] == len(result["tokens"])


def test_a_killed_worker_s_job_finishes_once_on_another(stack):
    request = {"model": "minilm-rt", "inputs": {"text": "Slow and steady, the film wins us over."},
               "methods": ["smoothgrad"], "params": {"smoothgrad": {"samples": 800, "batch_size": 8}}}
    job_id = stack.client.submit(request)["id"]

    def running_owner():
        with stack.db.session() as s:
            job = s.get(Job, job_id)
            return job.lease_owner if job.status == "running" and job.progress > 0 else None

    owner = _wait_for(running_owner, 180, "the job to run")
    child_pid = int(owner.split(":")[1])
    victim = next(w for w in stack.workers if is_ancestor(w.pid, child_pid))
    os.killpg(victim.pid, signal.SIGKILL)  # the machine is gone: main process and pool child, no goodbye
    victim.wait(10)

    job = stack.client.wait(job_id, timeout=300)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 2
    with stack.db.session() as s:
        row = s.scalars(select(Job).where(Job.id == job_id)).one()
    assert row.lease_owner is None and row.status == "succeeded"
    assert len({a["name"] for a in job["artifacts"]}) == len(job["artifacts"])
    survivor = next(w for w in stack.workers if w is not victim)
    assert survivor.poll() is None
    assert f"job {job_id} attempt 2" in (stack.tmp / f"{survivor.name}.log").read_text()
    assert f"job {job_id} attempt 2" not in (stack.tmp / f"{victim.name}.log").read_text()



def test_embedded_demo_runs_and_shuts_down(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for var in [v for v in env if v.startswith("LANTERN_")]:
        env.pop(var)
    out = subprocess.run(LANTERN + ["demo", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "prediction: positive" in out.stdout and "embedded stack shut down" in out.stdout
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"gradient.png", "gradient.safetensors", "result.json"} <= files
