"""Prometheus metrics.

API (`/metrics` on the API port): request latency and counts, job counts by status, queue depth (Redis).
Workers (`/metrics` on LANTERN_WORKER_METRICS_PORT, served by the worker's main process): job durations by methods
and device, jobs by outcome, failures by reason, queue depth. Jobs run in Celery's pool processes, so worker
metrics use prometheus_client's multiprocess mode: each pool process writes its own files under one directory and
the main process sums them at scrape time.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from celery import Celery

    from service.config import Settings
    from service.runtime import Runtime

log = logging.getLogger("lantern.metrics")


class Metrics:
    """API metrics. Under gunicorn (`lantern serve`) each worker process writes its values to files under
    PROMETHEUS_MULTIPROC_DIR and a scrape sums them, so every scrape sees the whole API, not one process."""

    def __init__(self, runtime: Runtime) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        own = None if self.multiprocess else CollectorRegistry()
        self.latency = Histogram("lantern_http_request_seconds", "HTTP request latency",
                                 ["method", "endpoint", "status"], registry=own,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.requests = Counter("lantern_http_requests", "HTTP requests", ["method", "endpoint", "status"],
                                registry=own)
        self.state = _StateCollector(runtime)
        self.registry = own
        if own is not None:
            own.register(self.state)

    def observe(self, request, response, seconds: float) -> None:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        labels = (request.method, endpoint, str(response.status_code))
        self.latency.labels(*labels).observe(seconds)
        self.requests.labels(*labels).inc()

    def render(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self.state)
        return generate_latest(registry)


class _StateCollector:
    """Read at scrape time from the source of truth, so every API replica reports the same numbers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from service.db import JOB_STATES, Job

        jobs = GaugeMetricFamily("lantern_jobs", "jobs by status", labels=["status"])
        try:
            with self.runtime.db.session() as s:
                counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            for state in JOB_STATES:
                jobs.add_metric([state], counts.get(state, 0))
            yield jobs
        except Exception:  # a scrape must not fail because the database blinked
            log.warning("could not count jobs for /metrics")
        yield from queue_depth(self.runtime.celery, self.runtime.settings)


def queue_depth(celery: Celery, settings: Settings) -> Iterator[GaugeMetricFamily]:
    """`lantern_queue_depth{queue}`: messages waiting in Redis (the list KEDA scales on); nothing for other brokers."""
    if not settings.broker.startswith("redis"):
        return
    depth = GaugeMetricFamily("lantern_queue_depth", "messages waiting in the broker", labels=["queue"])
    try:
        with celery.connection_for_read() as conn:
            client = conn.default_channel.client
            for q in (settings.job_queue, settings.cpu_queue):
                depth.add_metric([q], client.llen(q))
        yield depth
    except Exception:
        log.warning("could not read queue depth for /metrics")


# --- workers ---------------------------------------------------------------------------------------------

JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_worker_metrics: WorkerMetrics | None = None
_own_dir: str | None = None


class WorkerMetrics:
    """Recorded by the process that runs the job (a Celery pool process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        labels = ["methods", "device", "status"]
        self.seconds = Histogram("lantern_worker_job_seconds", "job run time, claim to outcome", labels,
                                 registry=registry, buckets=JOB_BUCKETS)
        self.jobs = Counter("lantern_worker_jobs", "jobs run by workers, by outcome", labels, registry=registry)
        self.failures = Counter("lantern_worker_job_failures", "failed jobs by reason (problem status)",
                                ["methods", "device", "reason"], registry=registry)

    def observe(self, methods: list[str], device: str, status: str, seconds: float,
                reason: str | None = None) -> None:
        key = "+".join(sorted(methods)) or "-"  # method names come from the registry: bounded
        self.seconds.labels(key, device, status).observe(seconds)
        self.jobs.labels(key, device, status).inc()
        if status == "failed":
            self.failures.labels(key, device, reason or "unknown").inc()


def observe_job(methods: list[str], device: str, status: str, seconds: float, reason: str | None = None) -> None:
    """Record one finished job (never raises: metrics must not fail a job)."""
    global _worker_metrics
    try:
        if _worker_metrics is None:
            _worker_metrics = WorkerMetrics()
        _worker_metrics.observe(methods, device, status, seconds, reason)
    except Exception:
        log.warning("could not record job metrics", exc_info=True)


def enable_multiprocess() -> str:
    """Switch this process (and the pool processes it will fork) to multiprocess metrics: values live in files
    under PROMETHEUS_MULTIPROC_DIR, a fresh directory unless the operator set one. Call before forking."""
    global _own_dir
    from prometheus_client import values

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = _own_dir = tempfile.mkdtemp(prefix="lantern-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)
    values.ValueClass = values.get_value_class()
    return path


def disable_multiprocess() -> None:
    if _own_dir:
        shutil.rmtree(_own_dir, ignore_errors=True)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:  # scrapes and health probes every few seconds: not logged
        pass


def serve_worker_metrics(settings: Settings, celery: Celery, ready: Callable[[], bool]):
    """In the worker's main process: `/metrics` (pool processes' job metrics summed, queue depth, readiness) and
    `/healthz` (200 once Celery is consuming, 503 before and during shutdown). Returns the server (a daemon
    thread serves it)."""
    from prometheus_client.exposition import ThreadingWSGIServer
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)

    class _State:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            yield GaugeMetricFamily("lantern_worker_ready", "1 while this worker consumes jobs",
                                    value=1.0 if ready() else 0.0)
            yield from queue_depth(celery, settings)

    registry.register(_State())

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            ok = ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ready\n"]
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(registry)]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    server = make_server(settings.worker_metrics_host, settings.worker_metrics_port, app,
                         server_class=ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    log.info("worker metrics on %s:%d (/metrics, /healthz)", settings.worker_metrics_host,
             server.server_port)
    return server
