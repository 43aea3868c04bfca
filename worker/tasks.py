"""Celery tasks: thin. The message carries a job id; the row says what to do."""
from __future__ import annotations

from service.queue import RUN_JOB
from worker.celery_app import app, runtime, worker_name
from worker.runner import run_job


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: str) -> str:
    return run_job(runtime(), job_id, worker_name())
