"""Shared fixtures: real PostgreSQL and Redis (skipped locally when absent; a failure under CI=true),
settings for each backend, an API test client with a tenant key."""
from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import Api, make_settings

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
