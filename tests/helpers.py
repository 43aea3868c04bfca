"""Test helpers shared by several test modules (fixtures live in conftest.py)."""
from __future__ import annotations

import socket
import uuid
from pathlib import Path


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

    def as_(self, key: str) -> Api:
        return Api(self.app, key)
