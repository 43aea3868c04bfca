"""`lantern serve` opens its port only once the app can answer (issue 16, defect 7): the first connection that
the port accepts gets its answer at once, not after the app has finished importing."""
from __future__ import annotations

import os
import socket

import pytest
import requests

from tests.helpers import Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_the_port_opens_after_the_app_has_loaded(pg_url, redis_url, tmp_path):
    env = dict(os.environ, LANTERN_DATABASE_URL=pg_url, LANTERN_BROKER_URL=redis_url, LANTERN_DATA_DIR=str(tmp_path))
    stack = Stack(env, tmp_path)
    master = stack.spawn("serve", "--bind", f"127.0.0.1:{stack.port}", "--workers", "1", name="api")
    try:
        def accepts() -> bool:
            try:
                socket.create_connection(("127.0.0.1", stack.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(accepts, 120, "the API port", every=0.05)
        # the master (lantern serve execs gunicorn in place) holds the loaded app, torch included, before any
        # worker exists to answer: without preload it would hold neither
        assert "libtorch" in open(f"/proc/{master.pid}/maps").read()
        # the app is loaded in the master before the bind: one worker fork later it answers
        assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200
    finally:
        stack.stop()
    assert "Traceback" not in stack.log("api"), stack.log("api")[-3000:]


def test_an_oversized_header_gets_a_problem_from_the_served_app(pg_url, redis_url, tmp_path):
    env = dict(os.environ, LANTERN_DATABASE_URL=pg_url, LANTERN_BROKER_URL=redis_url, LANTERN_DATA_DIR=str(tmp_path))
    stack = Stack(env, tmp_path)
    stack.spawn("serve", "--bind", f"127.0.0.1:{stack.port}", "--workers", "1", name="api")
    try:
        wait_for(lambda: _answers(stack.url), 120, "the API")
        resp = requests.get(f"{stack.url}/v1/jobs", headers={"X-Padding": "x" * 20_000}, timeout=10)
        assert resp.status_code == 431 and resp.headers["Content-Type"] == "application/problem+json"
    finally:
        stack.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).ok
    except requests.RequestException:
        return False
