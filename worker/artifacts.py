"""The one artifact writer: a job's or an audit's files into the object store, all or none, as Artifact rows for
the transition that records the outcome (jobs.finish, audit_lifecycle.finish) to add."""
from __future__ import annotations

from service.db import Artifact
from service.storage import Store, sha256

Files = dict[str, tuple[bytes, str]]  # name -> (bytes, content type)


def store_files(store: Store, files: Files, *, job_id: str | None = None,
                audit_id: str | None = None) -> list[Artifact]:
    """Store every file under its owner's prefix (jobs/<id>/ or audits/<id>/), or none (Store.put_all removes
    what it wrote when a write fails, e.g. a full store), and answer their rows, not yet added to any session."""
    if (job_id is None) == (audit_id is None):
        raise ValueError("artifacts belong to exactly one job or one audit")
    prefix = f"jobs/{job_id}" if job_id is not None else f"audits/{audit_id}"
    store.put_all({f"{prefix}/{name}": file for name, file in files.items()})
    return [Artifact(job_id=job_id, audit_id=audit_id, name=name, content_type=content_type, bytes=len(data),
                     sha256=sha256(data), storage_key=f"{prefix}/{name}")
            for name, (data, content_type) in files.items()]
