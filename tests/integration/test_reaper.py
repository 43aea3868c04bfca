"""The reaper under load (issue 16, defect 2): one reaper at a time, and it re-sends only what the broker no
longer holds, so the broker never holds more messages than there are waiting jobs. Real broker: Redis for the
PostgreSQL backend, kombu's SQLAlchemy transport for the embedded one."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from service import jobs
from service.db import Job, utcnow
from service.queue import held_job_ids, send_job
from tests.integration.test_lifecycle import new_job

pytestmark = pytest.mark.postgres


def broker_length(runtime) -> int:
    with runtime.celery.connection_for_write() as conn:
        return conn.default_channel.queue_declare(runtime.settings.job_queue, passive=True).message_count


def test_the_reaper_resends_only_what_the_broker_lost(runtime):
    app, queue = runtime.celery, runtime.settings.job_queue
    waiting = [new_job(runtime) for _ in range(4)]
    for job_id in waiting[:3]:  # the fourth message was lost (e.g. the API died between commit and send)
        send_job(app, job_id, queue)
    with runtime.db.session() as s:  # all queued longer than REQUEUE_AFTER: a backlog, not a loss
        s.execute(update(Job).where(Job.id.in_(waiting)).values(
            enqueued_at=utcnow() - timedelta(seconds=runtime.settings.requeue_after + 1)))
    assert held_job_ids(app, [queue]) == set(waiting[:3])

    def held():
        return held_job_ids(app, [queue])

    def send(job_id, q):
        send_job(app, job_id, q)

    for _ in range(3):  # passes of reapers on three workers
        jobs.reap(runtime.db, runtime.settings, send, held)
    assert held_job_ids(app, [queue]) == set(waiting)
    assert broker_length(runtime) == len(waiting)


def test_one_reaper_leads_at_a_time(runtime):
    assert jobs.lead(runtime.db, "reaper", "worker-a", 30)
    assert not jobs.lead(runtime.db, "reaper", "worker-b", 30)
    assert jobs.lead(runtime.db, "reaper", "worker-a", 30)  # renewal
    assert jobs.lead(runtime.db, "reaper", "worker-b", -1) is False
    assert jobs.lead(runtime.db, "reaper", "worker-a", -1)  # the holder lets it lapse
    assert jobs.lead(runtime.db, "reaper", "worker-b", 30)  # and another takes it
