"""The submit's message on Redis: service.queue pushes it with one LPUSH instead of Celery's send_task; what lands
in the queue must be what send_task puts there (field for field, the delivery tag aside: kombu makes a new one
for every message), and a Celery worker's own decoding must read the job id from it."""
from __future__ import annotations

import json
import uuid

import pytest

pytestmark = pytest.mark.redis


@pytest.fixture
def app_and_queue(redis_url, tmp_path):
    import redis

    from service.config import Settings
    from service.queue import make_celery

    queue = f"test-push-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(env={}, data_dir=str(tmp_path), broker_url=redis_url, job_queue=queue,
                                 cpu_queue=f"{queue}-cpu")
    client = redis.Redis.from_url(redis_url)
    yield make_celery(settings), queue, client
    client.delete(queue, f"{queue}-cpu", f"_kombu.binding.{queue}", f"_kombu.binding.{queue}-cpu")


def _popped(client, queue: str) -> dict:
    raw = client.rpop(queue)
    assert raw is not None, "nothing in the queue"
    return json.loads(raw)


def test_the_pushed_message_is_the_one_celery_sends(app_and_queue):
    from service.queue import RUN_JOB, _push, send_job

    app, queue, client = app_and_queue
    job_id = uuid.uuid4().hex
    app.send_task(RUN_JOB, args=[job_id], queue=queue, task_id=job_id)
    celerys = _popped(client, queue)
    _push(app, job_id, queue)
    ours = _popped(client, queue)
    assert celerys["properties"].pop("delivery_tag") != ours["properties"].pop("delivery_tag")
    assert ours == celerys
    send_job(app, job_id, queue)  # the Redis broker's send_job is the push
    assert client.llen(queue) == 1


def test_a_worker_reads_the_job_id_from_the_pushed_message(app_and_queue):
    from kombu.transport.virtual import Message

    from service.queue import RUN_JOB, send_job

    app, queue, client = app_and_queue
    job_id = uuid.uuid4().hex
    send_job(app, job_id, queue)
    with app.connection_for_write() as conn:
        message = Message(_popped(client, queue), channel=conn.default_channel)
    args, kwargs, _ = message.decode()
    assert message.headers["task"] == RUN_JOB and message.headers["id"] == job_id and (args, kwargs) == ([job_id], {})
    assert message.delivery_info["routing_key"] == queue
