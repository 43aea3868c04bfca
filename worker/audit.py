"""The worker side of corpus audits: a micro-batch child job explains its items one after another on a warm model
and writes each item as soon as it is done (fenced by the batch's lease, so a re-run after a worker died redoes
only unfinished items); the finaliser accounts for every item, aggregates, and writes the report."""
from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import exists, select, update

from service.audits import counts, item_results
from service.db import Artifact, Audit, AuditItem, Job, utcnow
from service.runtime import Runtime
from service.storage import sha256

log = logging.getLogger("lantern.worker")
KEEP = ("tokens", "special", "words", "word_strings", "prediction", "target", "methods")


def run_batch(rt: Runtime, job: Job, worker: str, progress) -> tuple[dict[str, Any], dict]:
    """All unfinished items of the micro-batch in one engine pass (explain_batch); if that pass fails, item by
    item, so one bad item costs only itself."""
    from worker.methods import explain_batch
    from worker.work import model_ref

    with rt.db.session() as s:
        audit = s.get(Audit, job.audit_id)
        s.execute(update(Audit).where(Audit.id == audit.id, Audit.status == "queued").values(
            status="running", started_at=utcnow()))
        todo = s.scalars(select(AuditItem).where(
            AuditItem.audit_id == audit.id, AuditItem.model == job.request["model"],
            AuditItem.batch == job.request["batch"], AuditItem.status.notin_(("done", "failed")))
            .order_by(AuditItem.position)).all()
    req = audit.request
    adapter = rt.adapters.get(model_ref(rt, job.tenant_id, job.model_name, job.model_revision))

    def engine(items: list[AuditItem]) -> list[dict[str, Any]]:
        explanations = explain_batch(adapter, [i.input for i in items], req["methods"], req.get("layers"),
                                     req["target"], req["score"], req["params"], req["seed"], figures=False)
        return [{k: ex.result[k] for k in KEEP} for ex in explanations]

    progress(0.0)
    fits = [item for item in todo if within_limit(rt, job, worker, adapter, item)]
    failed_early, todo = len(todo) - len(fits), fits
    try:
        results = engine(todo) if todo else []
    except Exception as e:
        if _stops_the_batch(e):
            raise
        log.warning("audit %s batch %s: batched pass failed (%s); item by item", audit.id, job.request["batch"],
                    type(e).__name__)
        results = None
    if results is not None:
        for item, result in zip(todo, results, strict=True):
            write_item(rt, item.id, job.id, worker, "done", 1, result=result)
        done, failed = len(todo), failed_early
    else:
        done, failed = 0, failed_early
        for n, item in enumerate(todo):
            progress(n / len(todo))
            ok = one_item(rt, job, worker, item, engine)
            done, failed = done + ok, failed + (not ok)
    progress(1.0)
    return {"items": done + failed, "done": done, "failed": failed}, {}


def within_limit(rt: Runtime, job: Job, worker: str, adapter, item: AuditItem) -> bool:
    """The service's token limit holds for audit items as for jobs; an item over it fails with the reason."""
    from service.errors import Problem
    from worker.models.base import InputError

    try:
        n = adapter.count_tokens(item.input)
    except InputError as e:
        error = Problem(422, "Cannot explain this input", str(e)).body()
    else:
        if n <= rt.settings.max_tokens:
            return True
        error = Problem(422, "Input too long", f"the input has {n} tokens; the limit is "
                                               f"{rt.settings.max_tokens}").body()
    write_item(rt, item.id, job.id, worker, "failed", 1, error=error)
    return False


def one_item(rt: Runtime, job: Job, worker: str, item: AuditItem, engine) -> bool:
    """An item alone, with its remaining attempts for transient failures; an InputError is final at once."""
    from worker.models.base import InputError
    from worker.work import problem_of

    for attempt in range(1, rt.settings.max_attempts + 1):
        try:
            write_item(rt, item.id, job.id, worker, "done", attempt, result=engine([item])[0])
            return True
        except InputError as e:  # this item cannot be explained: no retry
            write_item(rt, item.id, job.id, worker, "failed", attempt, error=problem_of(e))
            return False
        except Exception as e:
            if _stops_the_batch(e):
                raise
            log.warning("audit item %d attempt %d failed: %s", item.position, attempt, type(e).__name__)
            if attempt == rt.settings.max_attempts:
                write_item(rt, item.id, job.id, worker, "failed", attempt, error=problem_of(e))
    return False


def _stops_the_batch(error: Exception) -> bool:
    from celery.exceptions import SoftTimeLimitExceeded

    from worker.methods import Cancelled
    from worker.work import LeaseLost

    return isinstance(error, Cancelled | LeaseLost | SoftTimeLimitExceeded)


def write_item(rt: Runtime, item_id: str, job_id: str, worker: str, status: str, attempts: int,
               result: dict | None = None, error: dict | None = None) -> None:
    """Record one item, only while this worker holds the batch's lease."""
    holds_lease = exists().where(Job.id == job_id, Job.status == "running", Job.lease_owner == worker)
    with rt.db.session() as s:
        written = s.execute(update(AuditItem).where(
            AuditItem.id == item_id, AuditItem.status.notin_(("done", "failed")), holds_lease).values(
            status=status, attempts=attempts, result=result, error=error)).rowcount
    if not written:  # the batch's lease is gone: another worker owns these items now
        from worker.work import LeaseLost

        raise LeaseLost(job_id)



def run_finalize(rt: Runtime, job: Job, worker: str, progress) -> tuple[dict[str, Any], dict]:
    """Account for every item, aggregate, write the report artifacts, close the audit."""
    from worker.render.audit import charts
    from worker.report import aggregate, items_csv, report_html

    with rt.db.session() as s:
        audit = s.get(Audit, job.audit_id)
        if audit.status == "cancelled":
            return {"skipped": "cancelled"}, {}
        s.execute(update(AuditItem).where(AuditItem.audit_id == audit.id,
                                          AuditItem.status.notin_(("done", "failed"))).values(
            status="failed", error={"title": "Not processed", "status": 500,
                                    "detail": "its micro-batch was dead-lettered after repeated worker loss"}))
    progress(0.2)
    with rt.db.session() as s:
        items = item_results(s, audit.id)
        tally = counts(s, audit)
    aggregates = aggregate(items, audit.request)
    progress(0.5)
    files = charts(aggregates, audit.request["methods"])
    files_ct = {name: (png, "image/png") for name, png in files.items()}
    summary = {"id": audit.id, "counts": tally, "request": audit.request, "aggregates": aggregates}
    files_ct["summary.json"] = (json.dumps(summary, indent=1).encode(), "application/json")
    files_ct["items.csv"] = (items_csv(items, audit.request), "text/csv")
    files_ct["report.html"] = (report_html(audit.id, audit.request, tally, aggregates, files, items), "text/html")
    progress(0.8)
    rows = []
    for name, (data, content_type) in files_ct.items():
        key = f"audits/{audit.id}/{name}"
        rt.store.put(key, data, content_type)
        rows.append(Artifact(audit_id=audit.id, name=name, content_type=content_type, bytes=len(data),
                             sha256=sha256(data), storage_key=key))
    with rt.db.session() as s:
        for old in s.scalars(select(Artifact).where(Artifact.audit_id == audit.id)):
            s.delete(old)
        s.flush()
        s.add_all(rows)
        status = "succeeded" if tally["done"] else "failed"
        s.execute(update(Audit).where(Audit.id == audit.id, Audit.status.in_(("queued", "running"))).values(
            status=status, aggregates=aggregates, finished_at=utcnow(),
            error=None if tally["done"] else {"title": "Audit failed", "status": 500,
                                              "detail": "no item could be explained; see items.csv"}))
    return {"counts": tally}, {}


AUDIT_WORK = {"audit_batch": run_batch, "audit_finalize": run_finalize}
