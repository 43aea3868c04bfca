"""The Celery app, shared by the API (which only sends job ids) and the workers (worker/tasks.py).

Redis in production, kombu's server-less SQLAlchemy transport in the embedded default: the same task code.
"""
from __future__ import annotations

import json

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import sqlalchemy as kombu_sqlalchemy

from service.config import Settings

RUN_JOB = "lantern.run_job"
SQLA = "sqla+"  # the scheme prefix of kombu's SQLAlchemy transport


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
        transport = "service.redis_broker:Transport"  # kombu's, one command client per channel
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
    which jobs it holds)."""
    app.send_task(RUN_JOB, args=[job_id], queue=queue, task_id=job_id)


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
