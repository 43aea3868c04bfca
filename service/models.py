"""Which models a tenant may use, and their adapters (cached per revision in each process).

Zoo models come with the code and are visible to every tenant; registered bundles are rows in `models`,
their files in object storage, copied to a local cache directory keyed by revision before loading.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import Model
from service.errors import conflict, not_found
from service.storage import Store


@dataclass(frozen=True)
class ModelRef:
    name: str
    revision: str
    zoo: bool
    storage_key: str | None = None


def resolve(session: Session, tenant_id: str, name: str) -> ModelRef:
    """The newest revision of `name` visible to the tenant; 404 for anything else (other tenants' included)."""
    from worker.models import bundle_revision, zoo_names

    row = session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.name == name).order_by(Model.created_at.desc())
    ).first()
    if row is not None:
        return ModelRef(row.name, row.revision, False, row.storage_key)
    if name in zoo_names():
        from worker.models import bundle_dir

        return ModelRef(name, bundle_revision(bundle_dir(name)), True)
    raise not_found(f"model {name!r}")


def listing(session: Session, tenant_id: str) -> list[dict[str, Any]]:
    from worker.models import bundle_dir, bundle_revision, zoo_names

    items = [{"name": n, "revision": bundle_revision(bundle_dir(n)), "zoo": True} for n in zoo_names()]
    rows = session.scalars(select(Model).where(Model.tenant_id == tenant_id).order_by(Model.name)).all()
    items += [{"name": r.name, "revision": r.revision, "zoo": False, "created_at": r.created_at.isoformat()}
              for r in rows]
    return items


class AdapterCache:
    """One adapter per model revision per process (models load lazily; workers keep them warm)."""

    def __init__(self, store: Store, cache_dir: Path, device: str = "cpu") -> None:
        self.store, self.cache_dir, self.device = store, cache_dir, device
        self._adapters: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, ref: ModelRef):
        """The adapter for a revision. A registered revision is the content hash of every file the loader reads, so
        the copy loaded from storage is checked against it: a cache keyed by revision only ever holds those bytes.
        (Zoo models come with the code; their revision is whatever the installed files hash to.)"""
        from worker.models import load_model

        with self._lock:
            adapter = self._adapters.get(ref.revision)
            if adapter is None:
                source = ref.name if ref.zoo else str(self._materialise(ref))
                adapter = load_model(source).to(self.device)
                if not ref.zoo and adapter.revision != ref.revision:
                    raise conflict(f"model {ref.name!r}: the stored files have revision {adapter.revision[:12]}, "
                                   f"not the registered {ref.revision[:12]}; register the bundle again")
                self._adapters[ref.revision] = adapter
            return adapter

    def _materialise(self, ref: ModelRef) -> Path:
        from worker.models.bundle import CACHE_MARKER

        target = self.cache_dir / ref.revision
        if not (target / CACHE_MARKER).exists():
            materialise(self.store, ref.storage_key or "", target)
            (target / CACHE_MARKER).touch()
        return target


def materialise(store: Store, prefix: str, target: Path) -> Path:
    """Copy a registered bundle's files from object storage into a directory."""
    target.mkdir(parents=True, exist_ok=True)
    for key in store.list(prefix):
        dest = target / key[len(prefix):].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(store.get(key))
    return target
