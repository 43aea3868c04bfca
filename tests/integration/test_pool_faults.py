"""PostgreSQL dropping the API's pooled connections while they sit idle in the pool (a restart, a failover, an
idle timeout in between; here pg_terminate_backend on the test session's scratch database): a connection idle
longer than service.db.POOL_PING_IDLE_SECONDS is pinged and replaced before use, so the request succeeds; one
that died within that interval fails its request with 503 + Retry-After (never 500), and the pool, invalidated by
that disconnect, serves the next requests on new connections. (tests/chaos restarts a PostgreSQL of its own.)"""
from __future__ import annotations

import psycopg
import pytest

from tests.helpers import wait_for

BODY = {"model": "minilm-rt", "inputs": {"text": "A gripping film."}, "methods": ["gradient"]}


def _kill_pooled(engine, n: int = 3) -> None:
    """Terminate the server side of n pooled connections (checked out together, so n are in the pool after)."""
    conns = [engine.connect() for _ in range(n)]
    pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in conns]
    for c in conns:
        c.close()
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        wait_for(lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]).fetchone(),
                 30, "the backends to end")


def _submit(api, seed: int):
    return api.post("/v1/jobs", json={**BODY, "seed": seed})


@pytest.mark.parametrize("backend", ["postgres"])
def test_connections_killed_while_idle_are_replaced_before_use(api, runtime, monkeypatch):
    from service import db

    assert _submit(api, 0).status_code == 202  # warm
    monkeypatch.setattr(db, "POOL_PING_IDLE_SECONDS", 0.0)  # every pooled connection has been idle long enough
    _kill_pooled(runtime.db.engine)
    statuses = [_submit(api, seed).status_code for seed in range(1, 5)]
    assert statuses == [202] * 4, statuses


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_connection_killed_unseen_is_a_503_then_the_pool_recovers(api, runtime, monkeypatch):
    from service import db

    assert _submit(api, 0).status_code == 202  # warm
    monkeypatch.setattr(db, "POOL_PING_IDLE_SECONDS", 1e9)  # no ping: the dead connection is used
    _kill_pooled(runtime.db.engine)
    first = _submit(api, 1)
    assert first.status_code == 503, first.get_data(as_text=True)
    assert first.headers.get("Retry-After") and first.mimetype == "application/problem+json"
    statuses = [_submit(api, seed).status_code for seed in range(2, 6)]
    assert statuses == [202] * 4, statuses
