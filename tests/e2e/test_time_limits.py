"""Celery's soft time limit on a real worker process: the job is recorded as failed with a time-limit problem
(not retried, not lost), and the worker goes on to the next job."""
from __future__ import annotations

import pytest

from tests.helpers import production_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, tmp_path_factory):
    env = {"LANTERN_SOFT_TIME_LIMIT": "10", "LANTERN_HARD_TIME_LIMIT": "30"}
    with production_stack(pg_url, redis_url, tmp_path_factory.mktemp("limits"), api_workers=1, workers=1,
                          env=env) as st:
        yield st


def test_soft_time_limit_fails_the_job_and_the_worker_goes_on(stack):
    slow = {"model": "minilm-rt", "inputs": {"text": "Slow and steady, the film wins us over."},
            "methods": ["smoothgrad"], "params": {"smoothgrad": {"samples": 10000, "batch_size": 1}}}
    job = stack.client.wait(stack.client.submit(slow), timeout=240)
    assert job["status"] == "failed", (job, stack.logs())
    assert job["error"]["status"] == 504 and "time limit" in job["error"]["detail"]
    assert job["attempts"] == 1 and job["progress"] < 1
    quick = {"model": "minilm-rt", "inputs": {"text": "A fine film."}, "methods": ["gradient"]}
    after = stack.client.wait(stack.client.submit(quick), timeout=240)
    assert after["status"] == "succeeded", (after, stack.logs())
