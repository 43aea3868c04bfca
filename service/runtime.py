"""The process's wiring, made once from Settings: database, object store, Celery app, model adapters."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery

from service.config import Settings
from service.db import Database
from service.models import ModelAdapters
from service.queue import make_celery
from service.storage import Store, open_store


@dataclass
class Runtime:
    settings: Settings
    device: str = "cpu"

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.db_url)

    @cached_property
    def store(self) -> Store:
        s = self.settings
        return open_store(s.storage, s.s3_endpoint_url, s.s3_region, s.s3_public_url)

    @cached_property
    def celery(self) -> Celery:
        if self.settings.embedded or self.settings.broker.startswith("sqla+sqlite"):
            self.settings.data_path.mkdir(parents=True, exist_ok=True)
        return make_celery(self.settings)

    @cached_property
    def adapters(self) -> ModelAdapters:
        from worker.models import set_cache_limit

        set_cache_limit(self.settings.model_cache_size)  # the cache is the process's: its last runtime sets the bound
        return ModelAdapters(self.store, self.settings.data_path / "model-cache", self.device)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()
