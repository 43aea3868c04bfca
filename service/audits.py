"""Corpus audits (DESIGN §1, §6): parse and validate a corpus, fan it out as micro-batch child jobs tracked in the
database (the same lease/reaper/dead-letter machinery as single jobs), release the finaliser when every batch has
ended, and report progress. No Celery chords: the rows are the truth."""
from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import (
    FINISHED,
    IN_FLIGHT,
    WAITING,
    Artifact,
    Audit,
    AuditItem,
    Database,
    Job,
    Upload,
    is_id,
    new_id,
    utcnow,
)
from service.errors import conflict, invalid, not_found, too_many

ITEM_FIELDS = ({"text"}, {"premise", "hypothesis"})
MAX_AUDITS_IN_FLIGHT = 3


# --- corpus ----------------------------------------------------------------------------------------------


def check_item(item: Any, where: str, settings: Settings) -> dict[str, str]:
    """One corpus item: {"text"} or {"premise", "hypothesis"}, optional "label"; other fields are ignored."""
    if not isinstance(item, dict):
        raise invalid(f"{where}: an item must be an object with 'text' or 'premise' + 'hypothesis'", "corpus")
    fields = next((f for f in ITEM_FIELDS if f <= set(item)), None)
    if fields is None:
        raise invalid(f"{where}: no 'text' column, nor 'premise' + 'hypothesis' (found: "
                      f"{', '.join(sorted(map(str, item))) or 'nothing'})", "corpus")
    out = {}
    for name in sorted(fields):
        value = item[name]
        if not isinstance(value, str) or not value.strip():
            raise invalid(f"{where}: '{name}' is empty", "corpus")
        if len(value) > settings.max_item_chars:
            raise invalid(f"{where}: '{name}' has {len(value):,} characters; the limit is "
                          f"{settings.max_item_chars:,}", "corpus")
        out[name] = value
    label = item.get("label")
    if label not in (None, ""):
        out["label"] = str(label)[:100]
    return out


def parse_corpus_file(data: bytes, filename: str, settings: Settings) -> list[dict[str, str]]:
    """JSONL or CSV (by extension, else sniffed). Clear problems for every way a file can be wrong."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise invalid(f"the file is not UTF-8 (invalid byte at offset {e.start})", "file") from None
    if not text.strip():
        raise invalid("the file is empty", "file")
    is_jsonl = filename.lower().endswith((".jsonl", ".json", ".ndjson")) or (
        not filename.lower().endswith(".csv") and text.lstrip().startswith("{"))
    rows = _jsonl_rows(text) if is_jsonl else _csv_rows(text)
    items = []
    for n, row in rows:
        if len(items) >= settings.max_audit_items:
            raise invalid(f"the file has more than {settings.max_audit_items:,} items (the limit)", "file")
        items.append(check_item(row, f"line {n}", settings))
    if not items:
        raise invalid("the file holds no items", "file")
    return items


def _jsonl_rows(text: str):
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except ValueError:
                raise invalid(f"line {n}: not a JSON object", "file") from None


def _csv_rows(text: str):
    csv.field_size_limit(1 << 30)  # our own per-item limit gives the clearer message
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": quoted line breaks stay in their field
    try:
        if not reader.fieldnames:
            raise invalid("the CSV file has no header row", "file")
        for n, row in enumerate(reader, 2):
            yield n, {k: v for k, v in row.items() if k is not None}
    except csv.Error as e:  # e.g. a bare carriage return inside a row; csv's message quotes no data
        raise invalid(f"the CSV file cannot be read: {e}", "file") from None


def store_upload(session: Session, store, tenant_id: str, filename: str, data: bytes,
                 settings: Settings) -> Upload:
    items = parse_corpus_file(data, filename, settings)
    upload = Upload(tenant_id=tenant_id, filename=filename[:255], storage_key="", items=len(items), bytes=len(data))
    session.add(upload)
    session.flush()
    upload.storage_key = f"uploads/{tenant_id}/{upload.id}.jsonl"
    store.put(upload.storage_key, "\n".join(json.dumps(i) for i in items).encode(), "application/x-ndjson")
    return upload


def delete_upload(session: Session, store, tenant_id: str, upload_id: str) -> None:
    """Delete an uploaded corpus file (audits made from it keep their copied items); 404 for another tenant's."""
    upload = session.get(Upload, upload_id)
    if upload is None or upload.tenant_id != tenant_id:
        raise not_found(f"upload {upload_id!r}")
    store.delete(upload.storage_key)  # the object first: a delete cut short never leaves a stray file
    session.delete(upload)


def resolve_corpus(session: Session, store, tenant_id: str, corpus: dict[str, Any],
                   settings: Settings) -> list[dict[str, str]]:
    from worker.data.corpora import CORPORA
    from worker.data.corpora import corpus as named

    if "items" in corpus:
        items = corpus["items"]
        if not items:
            raise invalid("the corpus has no items", "corpus")
        if len(items) > settings.max_audit_items:
            raise invalid(f"{len(items):,} items; the limit is {settings.max_audit_items:,}", "corpus")
        return [check_item(item, f"item {n}", settings) for n, item in enumerate(items)]
    if "name" in corpus:
        if corpus["name"] not in CORPORA:
            raise invalid(f"unknown corpus {corpus['name']!r}; built-in corpora: {sorted(CORPORA)}", "corpus")
        return named(corpus["name"])
    upload = session.get(Upload, corpus["upload"])
    if upload is None or upload.tenant_id != tenant_id:
        raise invalid(f"unknown upload {corpus['upload']!r}", "corpus")
    return [json.loads(line) for line in store.get(upload.storage_key).decode().splitlines()]


def sample(items: list[dict[str, str]], n: int | None, seed: int) -> list[tuple[int, dict[str, str]]]:
    """(position, item) pairs: all items, or a seeded sample of n kept in corpus order."""
    indexed = list(enumerate(items))
    if n is None or n >= len(items):
        return indexed
    return sorted(random.Random(seed).sample(indexed, n), key=lambda pair: pair[0])


# --- fan-out ---------------------------------------------------------------------------------------------


def create(session: Session, tenant_id: str, request: dict[str, Any], revisions: dict[str, str],
           items: list[tuple[int, dict[str, str]]], settings: Settings) -> tuple[Audit, list[Job]]:
    """The audit row, one item row per (model, item), one batch job per micro-batch, and the finaliser (waiting)."""
    busy = session.scalar(select(func.count()).select_from(Audit).where(
        Audit.tenant_id == tenant_id, Audit.status.in_(IN_FLIGHT)))
    if busy >= MAX_AUDITS_IN_FLIGHT:
        raise too_many(f"{busy} audits in flight; the limit is {MAX_AUDITS_IN_FLIGHT}", 30)
    audit = Audit(tenant_id=tenant_id, request=request, total=len(items) * len(revisions))
    session.add(audit)
    session.flush()
    size = request["batch_size"]
    batches: list[Job] = []
    rows = []
    for model, revision in revisions.items():
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            batch = start // size
            rows += [dict(audit_id=audit.id, model=model, position=pos, batch=batch, label=item.get("label"),
                          input={k: v for k, v in item.items() if k != "label"}, status="queued", attempts=0)
                     for pos, item in chunk]
            batches.append(_child(audit, "audit_batch", model, revision, settings.job_queue,
                                  {"audit_id": audit.id, "model": model, "batch": batch}))
    session.execute(AuditItem.__table__.insert(), [dict(r, id=_uuid()) for r in rows])
    first = next(iter(revisions.items()))
    finaliser = _child(audit, "audit_finalize", first[0], first[1], settings.cpu_queue, {"audit_id": audit.id})
    finaliser.status = WAITING
    session.add_all(batches + [finaliser])
    session.flush()
    return audit, batches


def _child(audit: Audit, kind: str, model: str, revision: str, queue: str, request: dict[str, Any]) -> Job:
    return Job(tenant_id=audit.tenant_id, audit_id=audit.id, kind=kind, model_name=model, model_revision=revision,
               request=request, request_hash="", queue=queue)


def _uuid() -> str:
    return new_id()


def release_finalizers(db: Database, send: Callable[[str, str], None]) -> int:
    """Queue the finaliser of every audit whose batches have all ended (succeeded, failed or dead-lettered)."""
    with db.session() as s:
        waiting = s.execute(select(Job.id, Job.audit_id, Job.queue).where(
            Job.kind == "audit_finalize", Job.status == WAITING)).all()
        ready = []
        for job_id, audit_id, queue in waiting:
            open_batches = s.scalar(select(func.count()).select_from(Job).where(
                Job.audit_id == audit_id, Job.kind == "audit_batch", Job.status.in_(IN_FLIGHT)))
            if open_batches == 0 and s.execute(update(Job).where(Job.id == job_id, Job.status == WAITING).values(
                    status="queued", enqueued_at=utcnow())).rowcount:
                ready.append((job_id, queue))
    for job_id, queue in ready:
        send(job_id, queue)
    return len(ready)


# --- reading and cancelling ------------------------------------------------------------------------------


def get(session: Session, tenant_id: str, audit_id: str) -> Audit:
    audit = session.get(Audit, audit_id) if is_id(audit_id) else None
    if audit is None or audit.tenant_id != tenant_id:
        raise not_found(f"audit {audit_id}")
    return audit


def counts(session: Session, audit: Audit) -> dict[str, int]:
    by_status = dict(session.execute(select(AuditItem.status, func.count()).where(
        AuditItem.audit_id == audit.id).group_by(AuditItem.status)).all())
    return {"total": audit.total, "done": by_status.get("done", 0), "failed": by_status.get("failed", 0)}


def document(session: Session, audit: Audit) -> dict[str, Any]:
    c = counts(session, audit)
    finished = c["done"] + c["failed"]
    elapsed = ((audit.finished_at or utcnow()) - audit.started_at).total_seconds() if audit.started_at else 0
    rate = finished / elapsed if elapsed > 0 and finished else None
    aggregates = audit.aggregates
    if aggregates is None and c["done"]:
        aggregates = partial_aggregates(session, audit)
    artifacts = session.scalars(select(Artifact).where(Artifact.audit_id == audit.id).order_by(Artifact.name))
    return {
        "id": audit.id, "status": audit.status,
        "progress": round(finished / audit.total, 4) if audit.total else 0.0,
        "counts": c,
        "items_per_second": round(rate, 3) if rate else None,
        "eta_seconds": round((audit.total - finished) / rate, 1) if rate and audit.status in IN_FLIGHT else None,
        "models": list(audit.request["models"]), "methods": list(audit.request["methods"]),
        "created_at": audit.created_at.isoformat(),
        "started_at": audit.started_at.isoformat() if audit.started_at else None,
        "finished_at": audit.finished_at.isoformat() if audit.finished_at else None,
        "request": audit.request, "aggregates": aggregates, "error": audit.error,
        "artifacts": [{"name": a.name, "content_type": a.content_type, "bytes": a.bytes, "sha256": a.sha256,
                       "url": f"/v1/audits/{audit.id}/artifacts/{a.name}"} for a in artifacts],
    }


def partial_aggregates(session: Session, audit: Audit) -> dict[str, Any]:
    """The aggregates over the items finished so far (the finaliser computes the final ones the same way)."""
    from worker.report import aggregate

    return aggregate(item_results(session, audit.id), audit.request)


def item_results(session: Session, audit_id: str) -> list[dict[str, Any]]:
    rows = session.execute(select(AuditItem.model, AuditItem.position, AuditItem.label, AuditItem.status,
                                  AuditItem.input, AuditItem.result, AuditItem.error, AuditItem.attempts)
                           .where(AuditItem.audit_id == audit_id)
                           .order_by(AuditItem.model, AuditItem.position)).all()
    return [dict(r._mapping) for r in rows]


def cancel(session: Session, tenant_id: str, audit_id: str) -> Audit:
    audit = get(session, tenant_id, audit_id)
    if audit.status in FINISHED:
        raise conflict(f"audit {audit.id} already {audit.status}")
    now = utcnow()
    session.execute(update(Audit).where(Audit.id == audit.id).values(status="cancelled", finished_at=now,
                                                                     cancel_requested=True))
    session.execute(update(Job).where(Job.audit_id == audit.id, Job.status.in_(("queued", WAITING))).values(
        status="cancelled", finished_at=now, cancel_requested=True))
    session.execute(update(Job).where(Job.audit_id == audit.id, Job.status == "running").values(
        cancel_requested=True))
    session.refresh(audit)
    return audit



