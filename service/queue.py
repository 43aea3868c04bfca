"""The Celery app, shared by the API (which only sends job ids) and the workers (worker/tasks.py).

Redis in production, kombu's server-less SQLAlchemy transport in the embedded default: the same task code.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from kombu.utils import json as kombu_json

from service.config import Settings

RUN_JOB = "lantern.run_job"
SQLA = "sqla+"  # the scheme prefix of kombu's SQLAlchemy transport
REDIS_TRANSPORT = "service.redis_broker:Transport"


class PolledSQLTransport(kombu_sqlalchemy.Transport):
    """kombu's server-less SQLAlchemy transport, polled every 50 ms instead of every second: an idle worker of the
    embedded default otherwise notices a new job 0.5 s late on average (SQLite cannot notify; a poll is one indexed
    SELECT). Its options cannot set this: the transport hands them all to create_engine."""

    polling_interval = 0.05


def make_celery(settings: Settings) -> Celery:
    broker, transport = settings.broker, None
    if broker.startswith(SQLA):
        broker, transport = broker.removeprefix(SQLA), f"{__name__}:PolledSQLTransport"
    elif broker.startswith("redis://"):  # (rediss:// keeps kombu's own: its TLS settings come with the scheme)
        transport = REDIS_TRANSPORT  # kombu's, one command client per channel
    app = Celery("lantern", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport=transport,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,  # the job row is the truth, not a result backend
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        # Redis redelivers an unacked message after the visibility timeout: it must outlast the hard limit.
        # (kombu's SQLAlchemy transport passes its options to create_engine and has no such timeout.)
        broker_transport_options=(
            {"visibility_timeout": settings.visibility_timeout} if broker.startswith("redis") else {}),
        broker_connection_retry_on_startup=True,
        task_queues=[_queue(settings.job_queue), _queue(settings.cpu_queue)],
        task_default_queue=settings.cpu_queue,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.conf.lantern_settings = settings
    return app


def _queue(name: str) -> Queue:
    """A queue with its own direct exchange and routing key, so a message sent to it lands in it."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def send_job(app: Celery, job_id: str, queue: str) -> None:
    """The message carries the job id only (as its argument, and as the task id, so the broker can be asked
    which jobs it holds). On Redis it is pushed straight onto the queue's list (see `_push`); elsewhere Celery
    sends it."""
    if app.conf.broker_transport == REDIS_TRANSPORT:
        _push(app, job_id, queue)
    else:
        app.send_task(RUN_JOB, args=[job_id], queue=queue, task_id=job_id)


def _push(app: Celery, job_id: str, queue: str) -> None:
    """The message Celery's send_task would send (headers and properties by Celery's own as_task_v2, the envelope
    as kombu's Redis transport writes it: tests/integration/test_submit_broker.py compares the two), pushed with one
    LPUSH on a client this process keeps. send_task's producer pool, retry wrapper and queue declaration cost ~0.3 ms
    of a submit's ~3 ms CPU; a queue is declared by the workers that consume it, and a failed push leaves the job
    to the reaper (the caller marks it unsent), as a failed send_task did. Sent from inside a task (the finaliser
    release in worker/runner.py), send_task would add the task's parent_id and root_id; this message has none,
    which nothing reads (results are ignored)."""
    headers, properties, body, _ = app.amqp.as_task_v2(job_id, RUN_JOB, args=[job_id], kwargs={},
                                                       reply_to=app.thread_oid, ignore_result=None)
    message = {
        "body": base64.b64encode(kombu_json.dumps(body).encode()).decode(), "content-encoding": "utf-8",
        "content-type": "application/json", "headers": headers,
        "properties": {"priority": 0, **properties, "delivery_mode": 2, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": queue}, "delivery_tag": str(uuid.uuid4())},
    }
    _command_client(app).lpush(queue, kombu_json.dumps(message))


def _command_client(app: Celery) -> Any:
    """The Redis client of a broker connection the app holds for this process (made after a fork, never
    inherited): kombu's channel client, so the broker URL's and transport options' connection settings apply."""
    held = getattr(app, "_lantern_push", None)
    if held is None or held[0] != os.getpid():
        with _CONNECTING:  # a gthread worker's first burst of submits: one connection, not one per thread
            held = getattr(app, "_lantern_push", None)
            if held is None or held[0] != os.getpid():
                connection = app.connection_for_write()
                # with send_task's retries (under a second), not kombu's default for a channel (6 s, then forever)
                connection.ensure_connection(**app.conf.task_publish_retry_policy)
                held = (os.getpid(), connection, connection.default_channel._command_client)
                app._lantern_push = held  # goes with the app
    return held[2]


_CONNECTING = threading.Lock()


def connect_publisher(app: Celery) -> None:
    """Connect this process's publishing client now (an API worker warming up: service/gunicorn_conf.py), not at
    its first submit; on a broker other than Redis, Celery connects at its first send."""
    if app.conf.broker_transport == REDIS_TRANSPORT:
        _command_client(app).ping()


def held_job_ids(app: Celery, queues: list[str]) -> set[str] | None:
    """The ids of the jobs whose message the broker holds now: waiting in one of the queues, or (Redis) delivered
    to a worker and not yet acknowledged. None where the broker cannot be asked this."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        if hasattr(channel, "message_cls"):  # kombu's SQLAlchemy transport: rows stay, delivered ones invisible
            q, m = channel.queue_cls, channel.message_cls
            rows = channel.session.query(m.payload).filter(m.queue_id == q.id, q.name.in_(queues),
                                                           m.visible.is_(True)).all()
            return {_task_id(payload) for (payload,) in rows}
        client = getattr(channel, "client", None)
        if client is None or not hasattr(client, "lrange"):
            return None
        payloads = [raw for queue in queues for raw in client.lrange(queue, 0, -1)]
        for raw in client.hvals(channel.unacked_key):  # one hash for every queue: [message, exchange, routing key]
            message, _, routing_key = json.loads(raw)
            if routing_key in queues:
                payloads.append(json.dumps(message))
        return {_task_id(raw) for raw in payloads}


def _task_id(payload: str | bytes) -> str:
    try:
        return str(json.loads(payload).get("headers", {}).get("id"))
    except (ValueError, AttributeError):
        return ""


def broker_ok(app: Celery) -> None:
    """Raise if the broker cannot be reached (readiness)."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
