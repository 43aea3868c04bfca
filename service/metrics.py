"""Prometheus metrics: request latency and counts, job counts by status, queue depth (Redis)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from service.runtime import Runtime

log = logging.getLogger("lantern.metrics")


class Metrics:
    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("lantern_http_request_seconds", "HTTP request latency",
                                 ["method", "endpoint", "status"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.requests = Counter("lantern_http_requests", "HTTP requests", ["method", "endpoint", "status"],
                                registry=self.registry)
        self.registry.register(_StateCollector(runtime))

    def observe(self, request, response, seconds: float) -> None:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        labels = (request.method, endpoint, str(response.status_code))
        self.latency.labels(*labels).observe(seconds)
        self.requests.labels(*labels).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
        depth = GaugeMetricFamily("lantern_queue_depth", "messages waiting in the broker", labels=["queue"])
        settings = self.runtime.settings
        if settings.broker.startswith("redis"):
            try:
                with self.runtime.celery.connection_for_read() as conn:
                    client = conn.default_channel.client
                    for q in (settings.job_queue, settings.cpu_queue):
                        depth.add_metric([q], client.llen(q))
                yield depth
            except Exception:
                log.warning("could not read queue depth for /metrics")
