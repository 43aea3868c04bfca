"""The worker side of corpus audits: a micro-batch child job explains its items one after another on a warm model
and writes each item as soon as it is done (fenced by the batch's lease, so a re-run after a worker died redoes
only unfinished items), then folds the batch into the audit's aggregates so far; the finaliser accounts for every
item, aggregates them all once, and writes the report. Every row change goes through service/audit_lifecycle.py."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from service import audit_lifecycle as lifecycle
from service.db import Audit, AuditItem, Job
from service.domain import ItemStatus, JobStatus
from service.runtime import Runtime
from worker.artifacts import Files, store_files

log = logging.getLogger("lantern.worker")
KEEP = ("tokens", "special", "words", "word_strings", "prediction", "target", "methods")
Progress = Callable[[float], None]
Engine = Callable[[list[AuditItem]], list[dict[str, Any]]]


def run_batch(rt: Runtime, job: Job, worker: str, progress: Progress) -> tuple[dict[str, Any], Files]:
    """All unfinished items of the micro-batch in one engine pass (explain_batch); if that pass fails, item by
    item, so one bad item costs only itself. Then the batch is folded into the audit's aggregates so far."""
    from service.validation import limits_of
    from worker.methods import ExplainOptions, explain_many
    from worker.work import model_ref

    audit = _audit(lifecycle.start(rt.db, _audit_id(job)), job)
    todo = lifecycle.unfinished_items(rt.db, audit.id, job.request["model"], job.request["batch"])
    options, limits = ExplainOptions.from_document(audit.request), limits_of(rt.settings)
    adapter = rt.adapters.get(model_ref(rt, job.tenant_id, job.model_name, job.model_revision))

    def engine(items: list[AuditItem]) -> list[dict[str, Any]]:
        explanations = explain_many(adapter, options, [i.input for i in items], limits, figures=False)
        return [{k: ex.result[k] for k in KEEP} for ex in explanations]

    progress(0.0)
    fits = [item for item in todo if within_limit(rt, job, worker, adapter, item)]
    done, failed = _explain(rt, job, worker, fits, engine, progress)
    if not lifecycle.fold_batch(rt.db, audit.id, job.id, worker, _folder(audit, job)):
        # cancelled, or the lease went to another worker: its re-run of this batch folds it; the runner's fenced
        # finish then records nothing for this attempt
        log.info("audit %s batch %s: not folded here", audit.id, job.request["batch"])
    progress(1.0)
    failed += len(todo) - len(fits)
    return {"items": done + failed, "done": done, "failed": failed}, {}


def _explain(rt: Runtime, job: Job, worker: str, todo: list[AuditItem], engine: Engine,
             progress: Progress) -> tuple[int, int]:
    """(done, failed) of the items: one batched pass, or item by item when that pass fails."""
    try:
        results = engine(todo) if todo else []
    except Exception as e:
        if _stops_the_batch(e):
            raise
        log.warning("audit %s batch %s: batched pass failed (%s); item by item", job.audit_id, job.request["batch"],
                    type(e).__name__)
    else:
        for item, result in zip(todo, results, strict=True):
            write_item(rt, item.id, job.id, worker, ItemStatus.DONE, 1, result=result)
        return len(todo), 0
    done = 0
    for n, item in enumerate(todo):
        progress(n / len(todo))
        done += one_item(rt, job, worker, item, engine)
    return done, len(todo) - done


def within_limit(rt: Runtime, job: Job, worker: str, adapter: Any, item: AuditItem) -> bool:
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
    write_item(rt, item.id, job.id, worker, ItemStatus.FAILED, 1, error=error)
    return False


def one_item(rt: Runtime, job: Job, worker: str, item: AuditItem, engine: Engine) -> bool:
    """An item alone, with its remaining attempts for transient failures; an InputError is final at once."""
    from worker.models.base import InputError
    from worker.work import problem_of

    for attempt in range(1, rt.settings.max_attempts + 1):
        try:
            write_item(rt, item.id, job.id, worker, ItemStatus.DONE, attempt, result=engine([item])[0])
            return True
        except InputError as e:  # this item cannot be explained: no retry
            write_item(rt, item.id, job.id, worker, ItemStatus.FAILED, attempt, error=problem_of(e))
            return False
        except Exception as e:
            if _stops_the_batch(e):
                raise
            log.warning("audit item %d attempt %d failed: %s", item.position, attempt, type(e).__name__)
            if attempt == rt.settings.max_attempts:
                write_item(rt, item.id, job.id, worker, ItemStatus.FAILED, attempt, error=problem_of(e))
    return False


def _stops_the_batch(error: Exception) -> bool:
    from celery.exceptions import SoftTimeLimitExceeded

    from worker.methods import Cancelled
    from worker.work import LeaseLost

    return isinstance(error, Cancelled | LeaseLost | SoftTimeLimitExceeded)


def write_item(rt: Runtime, item_id: str, job_id: str, worker: str, status: str, attempts: int,
               result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> None:
    """Record one item, only while this worker holds the batch's lease."""
    if not lifecycle.record_item(rt.db, item_id, job_id, worker, status, attempts, result, error):
        from worker.work import LeaseLost  # the batch's lease is gone: another worker owns these items now

        raise LeaseLost(job_id)


def _folder(audit: Audit, job: Job) -> lifecycle.Fold:
    """The fold of this batch into the audit's running sums: its items that succeeded, and the same batch of
    each other model already folded (for the agreement between models)."""
    from worker.report import fold_batch, is_folded, results_by_model, running_aggregates, running_state

    model, batch, request = job.request["model"], job.request["batch"], audit.request

    def fold(session: Session, state: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
        state = state or running_state(request)
        if is_folded(state, model, batch):  # a re-run of a batch whose worker died after folding it
            return None
        per_model = results_by_model(lifecycle.item_results(session, audit.id, batch=batch))
        partners = {m: per_model.get(m, []) for m in request["models"] if m != model and is_folded(state, m, batch)}
        state = fold_batch(state, request, model, batch, per_model.get(model, []), partners)
        return state, running_aggregates(state, request)

    return fold


def _audit_id(job: Job) -> str:
    if job.audit_id is None:
        raise ValueError(f"job {job.id} ({job.kind}) belongs to no audit")
    return job.audit_id


def _audit(audit: Audit | None, job: Job) -> Audit:
    if audit is None:
        raise ValueError(f"the audit of job {job.id} is gone")
    return audit


def run_finalize(rt: Runtime, job: Job, worker: str, progress: Progress) -> tuple[dict[str, Any], Files]:
    """Account for every item, aggregate them all once, write the report artifacts, close the audit."""
    from worker.render.audit import charts
    from worker.report import aggregate, items_csv

    audit_id = _audit_id(job)
    with rt.db.session() as s:
        if _audit(s.get(Audit, audit_id), job).status == JobStatus.CANCELLED:
            return {"skipped": "cancelled"}, {}
    lifecycle.fail_unprocessed(rt.db, audit_id)
    progress(0.2)
    with rt.db.session() as s:
        audit = _audit(s.get(Audit, audit_id), job)
        items = lifecycle.item_results(s, audit_id)
    tally = lifecycle.counts(audit)
    aggregates = aggregate(items, audit.request)
    progress(0.5)
    pictures = charts(aggregates, audit.request["methods"])
    summary = {"id": audit_id, "counts": tally, "request": audit.request, "aggregates": aggregates}
    files: Files = {name: (png, "image/png") for name, png in pictures.items()}
    files["summary.json"] = (json.dumps(summary, indent=1).encode(), "application/json")
    files["items.csv"] = (items_csv(items, audit.request), "text/csv")
    files.update(report_files(audit_id, audit.request, tally, aggregates, items, files))
    progress(0.8)
    artifacts = store_files(rt.store, files, audit_id=audit_id)
    if lifecycle.finish(rt.db, audit_id, job.id, worker, aggregates, artifacts) is None:
        log.warning("audit %s: not closed by this finaliser (cancelled meanwhile, or its lease lost)", audit_id)
    return {"counts": tally}, {}


def report_files(audit_id: str, request: dict[str, Any], tally: dict[str, int], aggregates: dict[str, Any],
                 items: list[dict[str, Any]], files: Files) -> Files:
    """`attributions.jsonl` (every item's token and word scores per method) and `report.html`, the self-contained
    audit page whose drill-down shows the same per-item scores (docs/viewer.md)."""
    from worker.render.page import report_html
    from worker.render.page.audit import attribution_line

    lines = [attribution_line(item) for item in items]
    jsonl = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
    names = sorted([*files, "attributions.jsonl", "report.html"])
    document = {"id": audit_id, "status": JobStatus.SUCCEEDED if tally["done"] else JobStatus.FAILED,
                "models": request["models"], "methods": request["methods"], "counts": tally, "request": request,
                "aggregates": aggregates, "artifacts": [{"name": n} for n in names]}
    return {"attributions.jsonl": (jsonl, "application/jsonl"),
            "report.html": (report_html(document, lines).encode(), "text/html")}


AUDIT_WORK = {"audit_batch": run_batch, "audit_finalize": run_finalize}
