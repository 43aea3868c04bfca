"""Worker-side hardening on both backends: the lease survives a job that holds the interpreter lock, a dead worker's
lease still runs out, and what the worker would refuse is refused at submit (422 problem+json, nothing stored).
Real databases, no mocks."""
from __future__ import annotations

import base64
import ctypes
import io
import json
import pickle
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service import jobs
from service.db import Audit, Job, utcnow
from tests.helpers import wait_for
from tests.integration.test_lifecycle import new_job, state

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
LEASE = 2  # seconds: beats every 2/3 s, so a 3x-lease call would have missed four of them


@pytest.fixture
def short_lease(runtime):
    runtime.settings = replace(runtime.settings, lease_seconds=LEASE)
    return runtime


def hold_the_gil(seconds: int) -> int:
    """Sleep in C *without* releasing the interpreter lock (a PyDLL call keeps it, as a backtracking `re` does);
    returns how often a Python thread ran meanwhile, to prove the lock really was held."""
    ticks, done = [0], threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.01)

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    time.sleep(0.1)
    before = ticks[0]
    ctypes.PyDLL(None).sleep(seconds)
    ran = ticks[0] - before
    done.set()
    t.join()
    return ran


def lease_of(runtime, job_id):
    job = state(runtime, job_id)
    return job.status, job.lease_owner, job.lease_expires_at


REAPER = """
import pickle, base64, sys, time
from service import jobs
from service.db import Database, Job, utcnow
settings, job_id, at = pickle.loads(base64.b64decode(sys.argv[1])), sys.argv[2], float(sys.argv[3])
db = Database(settings.db_url)
time.sleep(max(at - time.time(), 0))
jobs.reap(db, settings, lambda *_: None)
with db.session() as s:
    job = s.get(Job, job_id)
    print(job.status, job.lease_expires_at is not None and job.lease_expires_at > utcnow(), flush=True)
"""


def settings_arg(rt) -> str:
    return base64.b64encode(pickle.dumps(rt.settings)).decode()


def test_lease_survives_a_call_that_holds_the_interpreter_lock(short_lease):
    from worker.runner import Heartbeat

    rt = short_lease
    job_id = new_job(rt)
    assert jobs.claim(rt.db, job_id, "w1", rt.settings, "cpu")
    beat = Heartbeat(rt, job_id, "w1")
    beat.start()
    beat.progress = 0.25
    # the reaper of another worker process looks at the row 3 leases into the call, while this process is stuck
    reaper = subprocess.Popen([sys.executable, "-c", REAPER, settings_arg(rt), job_id, str(time.time() + 3 * LEASE)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert hold_the_gil(3 * LEASE + 2) <= 2  # no thread of this process ran for 8 s: a heartbeat thread would not
    seen, _ = reaper.communicate(timeout=30)
    assert seen.split() == ["running", "True"], seen  # not requeued, lease unexpired, mid-call
    status, owner, expires = lease_of(rt, job_id)
    assert status == "running" and owner == "w1" and expires > utcnow()
    assert state(rt, job_id).progress == 0.25 and beat.owned

    beat.stop()
    time.sleep(1)  # a beat in flight when stop() came lands now
    stopped_at = lease_of(rt, job_id)[2]
    time.sleep(2 * LEASE / 3 + 0.5)
    assert lease_of(rt, job_id)[2] == stopped_at  # no more beats for a released job


def test_owned_turns_false_when_another_worker_takes_the_job(short_lease):
    from sqlalchemy import update

    from worker.runner import Heartbeat

    rt = short_lease
    job_id = new_job(rt)
    assert jobs.claim(rt.db, job_id, "w1", rt.settings, "cpu")
    beat = Heartbeat(rt, job_id, "w1")
    beat.start()
    with rt.db.session() as s:  # the reaper gave it to someone else
        s.execute(update(Job).where(Job.id == job_id).values(lease_owner="w2"))
    try:
        wait_for(lambda: not beat.owned, 3 * LEASE, "the keeper to report the lease lost")
    finally:
        beat.stop()


CHILD = """
import pickle, base64, sys, time
from worker.lease import hold
settings = pickle.loads(base64.b64decode(sys.argv[1]))
lease = hold(settings, sys.argv[2], "w-child")
print(lease.keeper.process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's exit is reaped by whatever adopted it, maybe not at once)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_worker_takes_its_keeper_along_and_its_lease_runs_out(short_lease):
    rt = short_lease
    job_id = new_job(rt)
    assert jobs.claim(rt.db, job_id, "w-child", rt.settings, "cpu")
    child = subprocess.Popen([sys.executable, "-c", CHILD, settings_arg(rt), job_id], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    try:
        sidecar = int(child.stdout.readline())
        assert alive(sidecar)
        time.sleep(LEASE + 0.5)  # the keeper beats for the live child: the lease outlives its first term
        assert lease_of(rt, job_id)[2] > utcnow()
    finally:
        child.kill()
        child.wait()
    wait_for(lambda: not alive(sidecar), 5, "the keeper to exit with its parent")
    wait_for(lambda: lease_of(rt, job_id)[2] < utcnow(), 2 * LEASE, "the dead worker's lease to run out")
    assert jobs.reap(rt.db, rt.settings, lambda *_: None)["requeued"] >= 1
    assert state(rt, job_id).status == "queued"


# --- refused at submit --------------------------------------------------------------------------------------

TEXT = "A gripping, beautifully acted film."


def job(**over):
    return {"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"], **over}


def activations(**params):
    return job(methods=["activations"], params={"activations": params})


REFUSED = [
    ("unknown activations layer", activations(layer="bogus"), "activations"),
    ("activations on a pooled layer", activations(layer="pool"), "activations"),
    ("regex RE2 cannot parse", activations(rank_by="correlation", pattern_regex="(["), "activations"),
    ("regex backreference", activations(rank_by="correlation", pattern_regex=r"(a)\1"), "activations"),
    ("regex lookahead", activations(rank_by="correlation", pattern_regex="good(?= film)"), "activations"),
    ("correlation without a pattern", activations(rank_by="correlation"), "activations"),
    ("unknown attention figure layer", job(methods=["attention"], params={"attention": {"figure_layer": "x"}}),
     "attention"),
    ("unknown sigma timestamp layer", job(methods=["sigma"], params={"sigma": {"timestamps": ["layer.99"]}}),
     "sigma"),
    ("sigma timestamps on the pooled layer", job(methods=["sigma"], params={"sigma": {"timestamps": ["pool"]}}),
     "sigma"),
    ("zero-width text", job(inputs={"text": "\u200b\u200b"}), "inputs"),
    ("soft hyphens only", job(inputs={"text": "\u00ad \u00ad"}), "inputs"),
]


def tenant_rows(runtime, api, table) -> int:
    from service.db import ApiKey

    with runtime.db.session() as s:
        tenant = s.get(ApiKey, api.key.split("_")[1]).tenant_id
        return s.scalar(select(func.count()).select_from(table).where(table.tenant_id == tenant))


def is_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.data
    assert resp.content_type == "application/problem+json"
    return resp.get_json(force=True)


@pytest.mark.parametrize("name,body,field", REFUSED, ids=[r[0] for r in REFUSED])
def test_what_the_worker_would_refuse_is_refused_at_submit(api, runtime, name, body, field):
    problem = is_problem(api.post("/v1/jobs", json=body), 422)
    assert field in json.dumps(problem), problem
    assert tenant_rows(runtime, api, Job) == 0


def test_the_checks_accept_what_the_worker_runs(api, runtime):
    """The other side of the table above: the same params, right, are taken (RE2 syntax, a real layer)."""
    for body in (activations(layer="layer.3", rank_by="correlation", pattern_regex=r'"[^"]*"|\bgood\b'),
                 job(methods=["attention"], params={"attention": {"figure_layer": "attention.2"}}),
                 job(inputs={"text": "good \u200b film"})):
        resp = api.post("/v1/jobs", json=body)
        assert resp.status_code == 202, resp.data
    assert tenant_rows(runtime, api, Job) == 3


@pytest.mark.parametrize("bad,why", [("word " * 600, "tokens"), ("\u200b\u200b", "no tokens")],
                         ids=["over the token limit", "zero tokens"])
def test_every_audit_item_is_checked_not_only_the_first(api, runtime, bad, why):
    items = [{"text": "A fine film."}, {"text": "A dull film."}, {"text": bad}, {"text": "Fine."}]
    problem = is_problem(api.post("/v1/audits", json={"model": "minilm-rt", "corpus": {"items": items},
                                                      "methods": ["gradient"]}), 422)
    assert "item 2" in problem["detail"] and why in problem["detail"], problem
    assert tenant_rows(runtime, api, Audit) == 0 and tenant_rows(runtime, api, Job) == 0


def test_audit_items_of_an_upload_are_checked_too(api, runtime):
    data = "\n".join(json.dumps({"text": t}) for t in ["A fine film.", "word " * 600]).encode()
    up = api.post("/v1/audits/uploads", data={"file": (io.BytesIO(data), "corpus.jsonl")},
                  content_type="multipart/form-data")
    assert up.status_code == 201, up.data
    problem = is_problem(api.post("/v1/audits", json={"model": "minilm-rt", "methods": ["gradient"],
                                                      "corpus": {"upload": up.get_json()["upload"]}}), 422)
    assert "item 1" in problem["detail"], problem
    assert tenant_rows(runtime, api, Audit) == 0
