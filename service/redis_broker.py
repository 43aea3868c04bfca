"""kombu's Redis transport, with one command client per channel (service.queue names it for a redis:// broker).

kombu sends every command outside a consumer's poll (each publish's LPUSH among them) through a new redis-py client
made for that one command: ~0.25 ms of CPU per job submission, most of it redis-py filling the new client's ~170
response callbacks. A client is only a handle on the channel's connection pool, which is where the sockets live,
so one client made once per channel sends the same commands over the same connections. Imported by kombu when the
transport is first used, not with service.queue (the API's master warms it before it forks: service.gunicorn_conf).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._command_client

    @cached_property
    def _command_client(self) -> Any:
        return self._create_client()


class Transport(kombu_redis.Transport):
    Channel = Channel
