"""Celery tasks: thin. The message carries a job id; the row says what to do."""
from __future__ import annotations

import logging

from service.queue import RUN_JOB
from worker.celery_app import app, runtime, worker_name
from worker.runner import DatabaseUnavailable, run_job

log = logging.getLogger("lantern.worker")

RETRY_CAP_SECONDS = 30


@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job_task(self, job_id: str) -> str:
    try:
        return run_job(runtime(), job_id, worker_name())
    except DatabaseUnavailable:
        # not acked and dropped: the message goes back to the broker for later, backing off while the outage lasts
        # (a job that was running meanwhile is claimable again once its lease runs out)
        delay = min(2 ** self.request.retries, RETRY_CAP_SECONDS)
        log.warning("job %s: database unreachable; retrying in %d s", job_id, delay)
        raise self.retry(countdown=delay) from None
