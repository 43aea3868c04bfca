"""Corpus audits, the API side: parse and validate a corpus, fan it out as micro-batch child jobs tracked in the
database (the same lease/reaper/dead-letter machinery as single jobs), and the audit document. No Celery chords:
the rows are the truth, and every change to them after creation is a transition of service/audit_lifecycle.py
(docs/architecture.md, Audits)."""
from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from service.audit_lifecycle import (
    artifacts_of,
    counts,
    release_finalizers,  # noqa: F401 (its old home, where tests import it)
)
from service.config import Settings
from service.db import IN_FLIGHT, WAITING, Audit, AuditItem, Job, Upload, new_id, tenant_row, utcnow
from service.domain import ItemStatus
from service.errors import Problem, invalid, too_many
from service.jobs import page
from service.jsontext import loads
from service.storage import Store

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
    items: list[dict[str, str]] = []
    for n, row in rows:
        if len(items) >= settings.max_audit_items:
            raise invalid(f"the file has more than {settings.max_audit_items:,} items (the limit)", "file")
        items.append(check_item(row, f"line {n}", settings))
    if not items:
        raise invalid("the file holds no items", "file")
    return items


def _jsonl_rows(text: str) -> Iterator[tuple[int, Any]]:
    """Each line parsed once, under the same depth and text rules as a request body (service/jsontext.py)."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, loads(line, f"line {n} of the file")
            except ValueError:
                raise invalid(f"line {n}: not a JSON object", "file") from None
            except Problem as e:
                if e.status == 422:  # the text rule: name the line, never echo the text
                    raise invalid(f"line {n}: invalid text: a lone UTF-16 surrogate or a NUL character",
                                  "file") from None
                raise


def _csv_rows(text: str) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(1 << 30)  # our own per-item limit gives the clearer message
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": quoted line breaks stay in their field
    try:
        if not reader.fieldnames:
            raise invalid("the CSV file has no header row", "file")
        for n, row in enumerate(reader, 2):
            yield n, {k: v for k, v in row.items() if k is not None}
    except csv.Error as e:  # e.g. a bare carriage return inside a row; csv's message quotes no data
        raise invalid(f"the CSV file cannot be read: {e}", "file") from None


def store_upload(session: Session, store: Store, tenant_id: str, filename: str, data: bytes,
                 settings: Settings) -> Upload:
    items = parse_corpus_file(data, filename, settings)
    upload = Upload(tenant_id=tenant_id, filename=filename[:255], storage_key="", items=len(items), bytes=len(data))
    session.add(upload)
    session.flush()
    upload.storage_key = f"uploads/{tenant_id}/{upload.id}.jsonl"
    store.put(upload.storage_key, "\n".join(json.dumps(i) for i in items).encode(), "application/x-ndjson")
    return upload


def delete_upload(session: Session, store: Store, tenant_id: str, upload_id: str) -> None:
    """Delete an uploaded corpus file (audits made from it keep their copied items); 404 for another tenant's."""
    upload = tenant_row(session, Upload, tenant_id, upload_id, "upload")
    store.delete(upload.storage_key)  # the object first: a delete cut short never leaves a stray file
    session.delete(upload)


def resolve_corpus(session: Session, store: Store, tenant_id: str, corpus: dict[str, Any],
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
        Audit.tenant_id == tenant_id, Audit.status.in_(IN_FLIGHT))) or 0
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
                          input={k: v for k, v in item.items() if k != "label"}, status=ItemStatus.QUEUED, attempts=0)
                     for pos, item in chunk]
            batches.append(_child(audit, "audit_batch", model, revision, settings.job_queue,
                                  {"audit_id": audit.id, "model": model, "batch": batch}))
    session.execute(insert(AuditItem), [dict(r, id=new_id()) for r in rows])
    first = next(iter(revisions.items()))
    finaliser = _child(audit, "audit_finalize", first[0], first[1], settings.cpu_queue, {"audit_id": audit.id})
    finaliser.status = WAITING
    session.add_all(batches + [finaliser])
    session.flush()
    return audit, batches


def _child(audit: Audit, kind: str, model: str, revision: str, queue: str, request: dict[str, Any]) -> Job:
    return Job(tenant_id=audit.tenant_id, audit_id=audit.id, kind=kind, model_name=model, model_revision=revision,
               request=request, request_hash="", queue=queue)


# --- reading -----------------------------------------------------------------------------------------


def listing(session: Session, tenant_id: str, limit: int, cursor: str | None,
            status: str | None) -> tuple[list[Audit], str | None]:
    """The tenant's audits, newest first, paged as jobs are."""
    q = select(Audit).where(Audit.tenant_id == tenant_id)
    if status:
        q = q.where(Audit.status == status)
    return page(session, q, Audit, limit, cursor)


def document(session: Session, audit: Audit) -> dict[str, Any]:
    """The audit document, from its row (counts and aggregates so far are kept there) and its artifacts.
    `items_per_second` and `eta_seconds` are as of the read: a 304 for the row's ETag may leave them older."""
    c = counts(audit)
    finished = c["done"] + c["failed"]
    elapsed = ((audit.finished_at or utcnow()) - audit.started_at).total_seconds() if audit.started_at else 0
    rate = finished / elapsed if elapsed > 0 and finished else None
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
        "request": audit.request, "aggregates": audit.aggregates, "error": audit.error,
        "artifacts": [{"name": a.name, "content_type": a.content_type, "bytes": a.bytes, "sha256": a.sha256,
                       "url": f"/v1/audits/{audit.id}/artifacts/{a.name}"} for a in artifacts_of(session, audit.id)],
    }
