"""The worker's database work for one short job (worker/runner.py): a gradient job that ends within its first
half second never asks whether it was cancelled (the claim refused a job whose cancel was asked for), and reads
its row only through the claim's and the finish's UPDATE … RETURNING."""
from __future__ import annotations

from sqlalchemy import event

BODY = {"model": "minilm-rt", "inputs": {"text": "A gripping film."}, "methods": ["gradient"], "faithfulness": "none"}


def test_a_short_job_does_not_look_for_a_cancel(api, runtime, monkeypatch):
    from worker import runner
    from worker.runner import run_job

    # the job must end before the first look is due: on a slow, loaded CI machine a gradient job can take longer
    # than the half second of production, which is not what this test is about
    monkeypatch.setattr(runner, "CANCEL_CHECK_SECONDS", 30.0)

    def submit(seed: int) -> str:
        response = api.post("/v1/jobs", json={**BODY, "seed": seed})
        assert response.status_code == 202
        return str(response.get_json()["id"])

    assert run_job(runtime, submit(0), "w1") == "succeeded"  # warm: the model loaded
    job_id, seen = submit(1), []

    def count(conn, cursor, statement, *args):
        if statement.strip().lower() not in ("select 1", "begin", "commit"):
            seen.append(" ".join(statement.split()))

    event.listen(runtime.db.engine, "before_cursor_execute", count)
    try:
        assert run_job(runtime, job_id, "w1") == "succeeded"
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", count)
    assert seen and not [s for s in seen if s.startswith("SELECT jobs.cancel_requested FROM")], seen
    # the claim and the finish read the job's row back from their UPDATEs (RETURNING): no SELECT of jobs at all
    assert not [s for s in seen if s.startswith("SELECT") and " FROM jobs" in s], seen
