"""Shared fixtures: real PostgreSQL and Redis (skipped locally when absent; a failure under CI=true),
settings for each backend, an API test client with a tenant key."""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PG = os.environ.get("LANTERN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("LANTERN_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require(what: str, ok: bool, why: str = "") -> None:
    """A missing service skips locally and fails under CI=true."""
    if ok:
        return
    message = f"{what} is not reachable {why}".strip()
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: services must be up)")
    pytest.skip(message)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    require("PostgreSQL", _port_open("127.0.0.1", 5432), "at 127.0.0.1:5432")
    import psycopg

    name = f"lantern_test_{uuid.uuid4().hex[:10]}"
    admin = PG.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG.rsplit("/", 1)[0] + f"/{name}"
    from service.migrate import upgrade

    upgrade(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    require("Redis", _port_open("127.0.0.1", 6379), "at 127.0.0.1:6379")
    return REDIS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(tmp: Path, backend: str = "sqlite", pg: str | None = None, redis: str | None = None,
                  **overrides):
    """Settings for a backend: sqlite = the embedded default; postgres = Postgres + Redis (production shape).
    Queue names are unique per call, so runs never read each other's messages on a shared Redis."""
    from service.config import Settings

    tag = uuid.uuid4().hex[:8]
    values = dict(data_dir=str(tmp), job_queue=f"gpu-{tag}", cpu_queue=f"cpu-{tag}")
    if backend == "postgres":
        values.update(database_url=pg, broker_url=redis)
    values.update(overrides)
    return Settings.from_env(env={}, **values)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(backend, tmp_path, request):
    if backend == "postgres":
        pg = request.getfixturevalue("pg_url")
        redis = request.getfixturevalue("redis_url")
        return make_settings(tmp_path, "postgres", pg, redis)
    return make_settings(tmp_path)


class Api:
    """A Flask test client with a tenant's key; `.as_(other)` talks as another tenant."""

    def __init__(self, app, key: str) -> None:
        self.app, self.client, self.key = app, app.test_client(), key

    def _h(self, headers):
        return {"Authorization": f"Bearer {self.key}", **(headers or {})}

    def get(self, path, headers=None, **kw):
        return self.client.get(path, headers=self._h(headers), **kw)

    def post(self, path, headers=None, **kw):
        return self.client.post(path, headers=self._h(headers), **kw)

    def delete(self, path, headers=None, **kw):
        return self.client.delete(path, headers=self._h(headers), **kw)

    def as_(self, key: str) -> "Api":
        return Api(self.app, key)


@pytest.fixture
def runtime(settings):
    from service.migrate import upgrade
    from service.runtime import Runtime

    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    rt = Runtime(settings)
    yield rt
    rt.close()


@pytest.fixture
def new_key(runtime):
    from service.auth import create_key

    tag = uuid.uuid4().hex[:8]  # tenants are unique per test: the Postgres database is shared by the session

    def make(tenant: str = "acme", **kw) -> str:
        with runtime.db.session() as s:
            return create_key(s, f"{tenant}-{tag}", **kw)[1]

    return make


@pytest.fixture
def api(runtime, new_key) -> Api:
    from service.app import create_app

    return Api(create_app(runtime=runtime), new_key("acme"))
