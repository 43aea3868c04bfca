"""Logging: plain or JSON lines. Nothing here logs request bodies: user text never goes into logs.

JSON lines carry the id of the job being run (`job_id`) when a worker logs inside a task: the worker sets it with
`job_context(job_id)` around each task (worker/celery_app.py), so every line of that job can be found by its id.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("lantern_job_id", default=None)


@contextlib.contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), "pid": record.process}
        job_id = getattr(record, "job_id", None) or current_job.get()
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
