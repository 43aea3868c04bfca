"""Registering user model bundles: validate (format, safety, weights that fit the config), identify by sha256,
copy to object storage, record an immutable revision row. Zoo names are reserved."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import Model
from service.domain import IN_FLIGHT, JobStatus
from service.errors import Problem, conflict, invalid, not_found
from service.storage import Store

if TYPE_CHECKING:
    from worker.models import Adapter, Encoding

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PART = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def safe_relpath(name: str) -> str:
    """A file name inside a bundle: relative, no '..', plain characters. Refuse anything else."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or not path.parts or len(path.parts) > 4 or not all(
            _PART.match(p) and p not in (".", "..") for p in path.parts):
        raise invalid(f"bad file name in the bundle: {name!r}", "files")
    return str(path)


def check_name(name: str) -> None:
    from worker.models import zoo_names

    if not NAME.match(name or ""):
        raise invalid("a model name is 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or "
                      "digit", "name")
    if name in zoo_names():
        raise conflict(f"{name!r} is a built-in zoo model; choose another name")


def smoke_test(bundle: Path) -> Adapter:
    """Load the weights and run one forward pass: proves the tensor names and shapes fit the config. The adapter is
    made outside the process's model cache, so its weights go with it once the caller is done: the API process keeps
    no model in memory after a registration (workers load the model when a job needs it)."""
    import torch

    from worker.models import InputError, open_model

    try:
        adapter = open_model(bundle)
        enc = _sample_input(adapter)
        with torch.no_grad():
            trace = adapter.forward(adapter.embed(enc), enc)
    except InputError as e:
        raise invalid(f"the bundle is not valid: {e}", "files") from e
    except Exception as e:  # shape mismatches, missing tensors, broken tokenizer files: all the uploader's to fix
        raise invalid(f"the bundle's weights do not load or run: {type(e).__name__}: {str(e)[:300]}",
                      "files") from e
    if adapter.labels is not None and (trace.logits is None or trace.logits.shape[-1] != len(adapter.labels)):
        raise invalid("the model's output size does not match its labels", "files")
    return adapter


def _sample_input(adapter: Adapter) -> Encoding:
    """One input the model takes, encoded: a prompt for a generative LM, a text, or for a model that reads only
    pairs (ESIM) a premise and a hypothesis. The adapter's own refusal of a text is how a pair model is told apart."""
    from worker.capabilities import Capability
    from worker.models import InputError

    if Capability.GENERATION in adapter.capabilities:  # causal and encoder–decoder LMs refuse a text
        return adapter.encode({"prompt": "a short test sentence"})
    try:
        return adapter.encode({"text": "a short test sentence"})
    except InputError:
        return adapter.encode({"premise": "A man sleeps.", "hypothesis": "A person rests."})


def register(session: Session, store: Store, tenant_id: str, name: str, bundle: Path) -> tuple[Model, bool]:
    """Register the bundle directory under `name` for the tenant. Returns (row, created)."""
    from worker.models.bundle import bundle_files, bundle_revision

    check_name(name)
    adapter = smoke_test(bundle)
    revision = bundle_revision(bundle)
    existing = session.scalars(select(Model).where(Model.tenant_id == tenant_id, Model.name == name,
                                                   Model.revision == revision)).first()
    if existing is not None:
        return existing, False
    key = f"models/{tenant_id}/{revision}"
    # every byte the revision covers, so the stored copy has that revision; all or none (a full store keeps none)
    store.put_all({f"{key}/{path.relative_to(bundle).as_posix()}": (path.read_bytes(), "application/octet-stream")
                   for path in bundle_files(bundle)})
    card = adapter.describe()
    row = Model(tenant_id=tenant_id, name=name, revision=revision, storage_key=key,
                card={k: card[k] for k in ("labels", "layers", "attention", "gates", "methods") if k in card})
    session.add(row)
    session.flush()
    return row, True


class Staging:
    """Uploaded files written to a private temporary directory, removed afterwards."""

    def __init__(self, files: dict[str, bytes]) -> None:
        if not files:
            raise invalid("no files uploaded; send the bundle's files as multipart field 'files'", "files")
        self.files = {safe_relpath(name): data for name, data in files.items()}

    def __enter__(self) -> Path:
        self.dir = Path(tempfile.mkdtemp(prefix="lantern-upload-"))
        for rel, data in self.files.items():
            dest = self.dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        return self.dir

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def server_path(path: str, root: str) -> Path:
    """A server-side bundle path, allowed only under the configured root (LANTERN_MODEL_ROOT)."""
    if not root:
        raise Problem(403, "Forbidden", "server-side model paths are disabled (LANTERN_MODEL_ROOT is not set); "
                                        "upload the files instead")
    base = Path(root).resolve()
    target = (base / path).resolve()
    if target != base and base not in target.parents:
        raise Problem(403, "Forbidden", "the path is outside the allowed model root")
    if not target.is_dir():
        raise invalid("no bundle directory at that path", "path")
    return target


def reidentify(conn: Any, store: Store) -> dict[str, int]:
    """Recompute every registered model's revision with the content hash of today (migration 0002).

    A bundle whose stored copy no longer validates (before 0002 dot-files were neither hashed nor stored, so a
    config that pointed at one cannot load) is withdrawn: its row and objects go, and its queued or running jobs
    fail with a 409 that says to register it again. A changed revision is written to the row and to the jobs still
    waiting for it; finished jobs keep the revision they ran with, as their record."""
    from sqlalchemy import delete, update

    from service.db import Job, utcnow
    from service.models import materialise
    from worker.models import InputError
    from worker.models.bundle import bundle_revision

    counts = {"unchanged": 0, "changed": 0, "withdrawn": 0}
    for row in conn.execute(select(Model.id, Model.tenant_id, Model.name, Model.revision, Model.storage_key)).all():
        waiting = (Job.tenant_id == row.tenant_id, Job.model_name == row.name, Job.model_revision == row.revision,
                   Job.status.in_(IN_FLIGHT))
        with tempfile.TemporaryDirectory(prefix="lantern-rehash-") as tmp:
            try:
                new = bundle_revision(materialise(store, row.storage_key, Path(tmp)))
            except InputError as err:
                new, why = None, str(err)
        if new == row.revision:
            counts["unchanged"] += 1
        elif new is not None:
            conn.execute(update(Model).where(Model.id == row.id).values(revision=new))
            conn.execute(update(Job).where(*waiting).values(model_revision=new))
            counts["changed"] += 1
        else:
            problem = conflict(f"model {row.name!r} revision {row.revision[:12]} was withdrawn: its stored files do "
                               f"not form a valid bundle ({why[:200]}); register it again").body()
            conn.execute(update(Job).where(*waiting).values(status=JobStatus.FAILED, error=problem, finished_at=utcnow(),
                                                             lease_owner=None, lease_expires_at=None))
            conn.execute(delete(Model).where(Model.id == row.id))
            for key in store.list(row.storage_key):
                store.delete(key)
            counts["withdrawn"] += 1
    return counts


def delete_model(session: Session, store: Store, tenant_id: str, name: str, revision: str | None) -> int:
    """Delete a registered model's revision (or, with none named, every revision of the name): its row and its
    stored files. 409 while a queued or running job uses it (as its model or one it compares with); finished jobs
    keep their documents, which name the revision they ran with. Returns how many revisions went."""
    from sqlalchemy import delete

    from service.db import IN_FLIGHT, Job
    from worker.models import zoo_names

    if name in zoo_names():
        raise conflict(f"{name!r} is a built-in zoo model; it cannot be deleted")
    query = select(Model).where(Model.tenant_id == tenant_id, Model.name == name)
    rows = list(session.scalars(query.where(Model.revision == revision) if revision else query))
    if not rows:
        raise not_found(f"model {name!r}" + (f" revision {revision[:12]}" if revision else ""))
    live = session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.status.in_(IN_FLIGHT))).all()
    revisions = {r.revision for r in rows}
    using = [j.id for j in live if (j.model_name == name and j.model_revision in revisions)
             or revisions & set((j.request.get("compare_revisions") or {}).values())]
    if using:
        raise conflict(f"{len(using)} queued or running job(s) use this model (e.g. {using[0]}); cancel them or "
                       "wait for them to end")
    for row in rows:  # objects first: a delete cut short leaves a row whose files are gone, never stray files
        for key in store.list(row.storage_key):
            store.delete(key)
        session.execute(delete(Model).where(Model.id == row.id))
    return len(rows)
