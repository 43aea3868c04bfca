"""Which models a tenant may use, and their adapters (from the one bounded model cache of each process).

Zoo models come with the code and are visible to every tenant; registered bundles are rows in `models`,
their files in object storage, copied to a local cache directory keyed by revision before loading.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import Model, newest_model_revision
from service.errors import conflict, not_found
from service.storage import Store

if TYPE_CHECKING:
    from worker.models import Adapter


@dataclass(frozen=True)
class ModelRef:
    name: str
    revision: str
    zoo: bool
    storage_key: str | None = None


def resolve(session: Session, tenant_id: str, name: str) -> ModelRef:
    """The newest revision of `name` visible to the tenant; 404 for anything else (other tenants' included)."""
    return ref_of(name, newest_row(session, tenant_id, name))


def newest_row(session: Session, tenant_id: str, name: str) -> Any | None:
    """The row (name, revision, storage_key) of the newest revision of `name` the tenant registered, or None."""
    return session.execute(newest_model_revision(), {"tenant_id": tenant_id, "name": name}).first()


def ref_of(name: str, row: Any | None) -> ModelRef:
    """resolve's answer from a row of `service.db.newest_model_revision()` (None: the tenant registered no `name`),
    for a caller that read that row in a statement of its own (a submit reads it with the tenant limits:
    service/jobs.py)."""
    from worker.models import is_zoo, zoo_revision

    if row is not None:
        return ModelRef(row.name, row.revision, False, row.storage_key)
    if is_zoo(name):
        return ModelRef(name, zoo_revision(name), True)
    raise not_found(f"model {name!r}")


def listing(session: Session, tenant_id: str) -> list[dict[str, Any]]:
    from worker.models import zoo_names, zoo_revision

    items = [{"name": n, "revision": zoo_revision(n), "zoo": True} for n in zoo_names()]
    rows = session.scalars(select(Model).where(Model.tenant_id == tenant_id).order_by(Model.name)).all()
    items += [{"name": r.name, "revision": r.revision, "zoo": False, "created_at": r.created_at.isoformat()}
              for r in rows]
    return items


class ModelAdapters:
    """A runtime's way to the adapter of a model revision: the process's one model cache (worker.models.cache,
    at most LANTERN_MODEL_CACHE_SIZE adapters), filled from the zoo or, for a registered bundle, from a local copy
    of its stored files. Adapters read weights lazily: the API only tokenises with them, workers run them."""

    def __init__(self, store: Store, cache_dir: Path, device: str = "cpu") -> None:
        self.store, self.cache_dir, self.device = store, cache_dir, device

    def get(self, ref: ModelRef) -> Adapter:
        """The adapter for a revision. A registered revision is the content hash of every file the loader reads, so
        the copy loaded from storage is checked against it: a cache keyed by revision only ever holds those bytes.
        (Zoo models come with the code; their revision is whatever the installed files hash to.)"""
        from worker.models import cached_adapter

        return cached_adapter(ref.revision, lambda: self._open(ref), self.device)

    def _open(self, ref: ModelRef) -> Adapter:
        from worker.models import open_model

        adapter = open_model(ref.name if ref.zoo else self._materialise(ref))
        if not ref.zoo and adapter.revision != ref.revision:
            raise conflict(f"model {ref.name!r}: the stored files have revision {adapter.revision[:12]}, "
                           f"not the registered {ref.revision[:12]}; register the bundle again")
        return adapter

    def _materialise(self, ref: ModelRef) -> Path:
        """The local copy of a registered bundle, made once per data directory. The copy is written aside and
        renamed into place, so processes sharing the directory never read a half-written one."""
        from worker.models.bundle import CACHE_MARKER

        target = self.cache_dir / ref.revision
        if (target / CACHE_MARKER).exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{ref.revision[:12]}-", dir=_made(self.cache_dir)))
        try:
            materialise(self.store, ref.storage_key or "", staging)
            (staging / CACHE_MARKER).touch()
            _move_into_place(staging, target, CACHE_MARKER)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _move_into_place(staging: Path, target: Path, marker: str) -> None:
    """Rename a complete copy to `target`, unless another process got there first; an incomplete leftover (a copy
    cut short before the marker existed) is replaced."""
    if target.exists() and not (target / marker).exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        if not (target / marker).exists():
            raise


def materialise(store: Store, prefix: str, target: Path) -> Path:
    """Copy a registered bundle's files from object storage into a directory."""
    target.mkdir(parents=True, exist_ok=True)
    for key in store.list(prefix):
        dest = target / key[len(prefix):].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(store.get(key))
    return target
