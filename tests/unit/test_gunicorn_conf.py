"""service/gunicorn_conf.py's settings and hooks that the production stack test cannot see from outside."""
from __future__ import annotations

import gc

from service import gunicorn_conf


def test_the_master_freezes_its_objects_before_each_fork():
    """A worker's full collection then skips everything the preloaded master made (torch, the app)."""
    gc.unfreeze()
    try:
        gunicorn_conf.pre_fork(None, None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_threaded_workers_keep_connections_alive_past_the_poll_interval():
    from service.config import Settings

    assert gunicorn_conf.worker_class == "gthread" and gunicorn_conf.threads > 1
    assert gunicorn_conf.keepalive >= 2 * Settings.from_env(env={}).retry_after + 2  # a polling client's room
