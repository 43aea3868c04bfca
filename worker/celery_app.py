"""The worker process: the Celery app with Lantern's tasks, a per-process Runtime, and the reaper thread.

`celery -A worker.celery_app worker` and `lantern worker` both use this module; settings come from the
environment (LANTERN_*), so production and the embedded default run the same code.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from celery import signals

from service.config import Settings
from service.queue import make_celery
from service.runtime import Runtime

log = logging.getLogger("lantern.worker")

app = make_celery(Settings.from_env())
app.conf.include = ["worker.tasks"]  # the worker imports the task module at start (it imports this one)
_runtimes: dict[int, Runtime] = {}


def pick_device(wanted: str) -> str:
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def runtime() -> Runtime:
    """One Runtime per process: engines and model caches must not cross a fork."""
    pid = os.getpid()
    if pid not in _runtimes:
        settings = app.conf.lantern_settings
        if settings.torch_threads > 0:
            import torch

            torch.set_num_threads(settings.torch_threads)
        _runtimes[pid] = Runtime(settings, device=pick_device(settings.device))
    return _runtimes[pid]


_names: dict[int, str] = {}


def worker_name() -> str:
    """This process's lease owner id (per pid: a replaced pool child is a different owner)."""
    pid = os.getpid()
    return _names.setdefault(pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:6]}")


PURGE_EVERY_SECONDS = 24 * 3600


class Reaper(threading.Thread):
    """Re-queues jobs whose worker died, re-sends queued jobs the broker lost, and once a day purges what is past
    its retention. Every worker runs one, but only the holder of the "reaper" lease works: one set of re-sends,
    not one per worker (each transition is a conditional UPDATE besides, so two could not step on each other)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="reaper")
        self.stopped = threading.Event()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:reaper:{uuid.uuid4().hex[:6]}"
        self.next_purge = 0.0  # monotonic time of the next purge: the first pass purges

    def run(self) -> None:
        rt = Runtime(app.conf.lantern_settings)
        while not self.stopped.wait(rt.settings.reaper_interval):
            try:
                self.work(rt)
            except Exception as e:
                from service.db import is_unavailable

                if is_unavailable(e):
                    log.warning("reaper pass skipped: the database is unreachable")
                else:
                    log.exception("reaper pass failed")

    def work(self, rt: Runtime) -> None:
        from service import jobs
        from service.audit_lifecycle import fail_abandoned, release_finalizers
        from service.queue import held_job_ids, send_job

        if not jobs.lead(rt.db, "reaper", self.owner, rt.settings.reaper_interval * 3):
            return
        queues = [rt.settings.job_queue, rt.settings.cpu_queue]
        def send(job_id: str, queue: str) -> None:
            send_job(app, job_id, queue)

        counts = jobs.reap(rt.db, rt.settings, send, held=lambda: held_job_ids(app, queues))
        counts["finalizers"] = release_finalizers(rt.db, send)
        counts["abandoned audits"] = fail_abandoned(rt.db)
        if any(counts.values()):
            log.info("reaper: %s", counts)
        if time.monotonic() >= self.next_purge:
            from service.retention import purge

            self.next_purge = time.monotonic() + PURGE_EVERY_SECONDS
            purged = purge(rt.db, rt.store, rt.settings)
            if any(purged.values()):
                log.info("purge: %s", purged)


_reaper = Reaper()


@signals.worker_ready.connect
def _start_reaper(**_: object) -> None:
    if not _reaper.is_alive():
        _reaper.start()


@signals.worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    _reaper.stopped.set()


# --- observability: metrics port in the main process, job ids on log lines ---------------------------------

_ready = threading.Event()
_metrics_server = None


@signals.worker_init.connect
def _metrics_multiprocess(**_: object) -> None:
    """Before the pool forks: pool processes write job metrics to files the main process serves."""
    if app.conf.lantern_settings.worker_metrics_port:
        from service.metrics import enable_multiprocess

        enable_multiprocess()


@signals.worker_ready.connect
def _serve_metrics(**_: object) -> None:
    global _metrics_server
    _ready.set()
    settings = app.conf.lantern_settings
    if settings.worker_metrics_port and _metrics_server is None:
        from service.metrics import serve_worker_metrics

        _metrics_server = serve_worker_metrics(settings, app, _ready.is_set)


@signals.worker_shutting_down.connect
def _not_ready(**_: object) -> None:
    _ready.clear()  # /healthz answers 503 during the warm shutdown


@signals.worker_shutdown.connect
def _stop_metrics(**_: object) -> None:
    if _metrics_server is not None:
        from service.metrics import disable_multiprocess

        _metrics_server.shutdown()
        disable_multiprocess()


@signals.task_prerun.connect
def _log_job_id(args=None, **_: object) -> None:
    from service.logs import current_job

    current_job.set(str(args[0]) if args else None)


@signals.task_postrun.connect
def _clear_job_id(**_: object) -> None:
    from service.logs import current_job

    current_job.set(None)

