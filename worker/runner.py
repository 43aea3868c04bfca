"""One job, start to end: claim the row → load the model → explain → store artifacts → record the outcome.

Thin by design (docs/architecture.md): the engine (worker.methods.explain) knows nothing of rows, queues or storage.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service import jobs
from service.db import Artifact, is_unavailable
from service.domain import JobKind, JobStatus
from service.errors import Problem
from service.metrics import observe_job
from service.runtime import Runtime
from worker.artifacts import Files, store_files
from worker.work import LeaseLost, is_input_error, is_time_limit, model_ref, problem_of

if TYPE_CHECKING:  # for the annotation only: Heartbeat.start imports the keeper when a job starts
    from worker.lease import Lease

log = logging.getLogger("lantern.worker")


class DatabaseUnavailable(Exception):
    """The database cannot be reached: nothing can be recorded, so the task puts the job back and retries later."""


CANCEL_CHECK_SECONDS = 0.5  # how often a running job asks whether its cancel was requested
# how long a finished job's worker waits for the database to come back to record the outcome
RECORD_PATIENCE_SECONDS = 300.0


class Heartbeat:
    """Keeps the lease alive while the engine computes, and carries the latest progress to the row.

    The beats come from the lease keeper's sidecar process (worker/lease.py), not from a thread here: a method that
    holds the interpreter lock in one long C call must not make a live worker look dead."""

    def __init__(self, rt: Runtime, job_id: str, worker: str) -> None:
        self.rt, self.job_id, self.worker = rt, job_id, worker
        self._lease: Lease | None = None
        self._progress: float | None = None

    def start(self) -> None:
        from worker.lease import hold

        self._lease = hold(self.rt.settings, self.job_id, self.worker)

    def stop(self) -> None:
        if self._lease is not None:
            self._lease.release()

    @property
    def progress(self) -> float | None:
        return self._progress

    @progress.setter
    def progress(self, fraction: float | None) -> None:
        self._progress = fraction
        if self._lease is not None:
            self._lease.set_progress(fraction)

    @property
    def owned(self) -> bool:
        return self._lease is None or self._lease.owned


def run_job(rt: Runtime, job_id: str, worker: str) -> str:
    """Run a job if this worker can claim it. Returns the final status, or 'skipped'."""
    from worker.methods import Cancelled

    try:
        claim = jobs.claim(rt.db, job_id, worker, rt.settings, rt.device)
    except Exception as e:
        if is_unavailable(e):
            raise DatabaseUnavailable(job_id) from e
        raise
    if claim is None:
        log.info("job %s not claimable here (taken, finished, cancelled or dead-lettered)", job_id)
        return "skipped"
    job = claim.job
    log.info("job %s attempt %d on %s", job_id, claim.attempt, rt.device)
    beat = Heartbeat(rt, job_id, worker)
    # the claim refused a job whose cancel was asked for, so the first look is due CANCEL_CHECK_SECONDS in, not at
    # the first step: a job shorter than that (a gradient: ~0.1 s) is spared a database round trip
    last_check = [time.monotonic()]

    def progress(fraction: float) -> None:
        beat.progress = round(fraction, 4)
        if not beat.owned:
            raise LeaseLost(job_id)
        now = time.monotonic()
        if now - last_check[0] >= CANCEL_CHECK_SECONDS:
            last_check[0] = now
            if _cancel_requested(rt, job_id):
                raise Cancelled(job_id)

    status: str = JobStatus.FAILED  # the metrics also count "lost" (another attempt owns the job)
    started, reason = time.monotonic(), None
    try:
        beat.start()  # inside: a keeper that cannot start fails the job with its reason, not by a lease run out
        if job.kind == JobKind.EXPLAIN:
            result, files = explain_job(rt, job.request, job.model_revision, progress, job.tenant_id)
        else:  # an audit's micro-batch or its finaliser: the same claim, lease and outcome, other work
            from worker.audit import AUDIT_WORK

            result, files = AUDIT_WORK[job.kind](rt, job, worker, progress)
        artifacts = store_artifacts(rt, job_id, files)
        status = JobStatus.SUCCEEDED
        finished = _when_recorded(lambda: jobs.finish(rt.db, job_id, worker, status, result=result,
                                                      artifacts=artifacts))
        if not finished:  # another attempt owns the job now; its own files replace these
            log.warning("job %s: finished after its lease was taken; the outcome was not recorded", job_id)
    except Cancelled:
        status = JobStatus.CANCELLED
        finished = _when_recorded(lambda: jobs.finish(rt.db, job_id, worker, status))
    except LeaseLost:
        status = "lost"
        log.warning("job %s: lease lost; another worker owns it now", job_id)
        return "skipped"
    except Exception as e:
        if is_unavailable(e):  # the row cannot be written: the lease runs out and the task's retry claims it again
            status = "lost"
            log.warning("job %s: the database is unreachable; the job goes back to the queue", job_id)
            raise DatabaseUnavailable(job_id) from e
        problem = problem_of(e)
        reason = str(problem.get("status", "unknown"))
        finished = _when_recorded(lambda: jobs.finish(rt.db, job_id, worker, status, error=problem))
        if not isinstance(e, Problem) and not is_input_error(e):
            log.exception("job %s failed", job_id)
        if is_time_limit(e):
            raise  # Celery records the soft time limit too (Superset's pattern)
    finally:
        beat.stop()
        observe_job(job.request.get("methods", []), rt.device, status, time.monotonic() - started, reason)
        if job.audit_id:
            _release_finalizers(rt)
    return status if finished else "skipped"


def _cancel_requested(rt: Runtime, job_id: str) -> bool:
    try:
        return jobs.cancel_requested(rt.db, job_id)
    except Exception as e:  # an outage: ask again at the next step; the lease keeper rides it out meanwhile
        if is_unavailable(e):
            return False
        raise


def _when_recorded(record: Callable[[], bool]) -> bool:
    """Record a finished job's outcome, waiting (with backoff) for an unreachable database to come back: the work
    is done and its files stored, so an outage shorter than RECORD_PATIENCE_SECONDS loses nothing."""
    deadline, delay = time.monotonic() + RECORD_PATIENCE_SECONDS, 0.5
    while True:
        try:
            return record()
        except Exception as e:
            if not is_unavailable(e) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def _release_finalizers(rt: Runtime) -> None:
    """Right after an audit's job ends: start its finaliser if that was the last batch, or fail the audit if its
    finaliser failed (the reaper does both otherwise)."""
    from service.audit_lifecycle import fail_abandoned, release_finalizers
    from service.queue import send_job

    try:
        release_finalizers(rt.db, lambda job_id, queue: send_job(rt.celery, job_id, queue))
        fail_abandoned(rt.db)
    except Exception:  # the reaper's next pass does the same
        log.warning("could not release audit finalisers now; the reaper will")


def explain_job(rt: Runtime, request: dict[str, Any], revision: str, progress,
                tenant_id: str) -> tuple[dict, dict]:
    """The engine call for one job request (and each model it is compared with), validated as at submit."""
    from service.validation import limits_of
    from worker.methods import ExplainRequest, explain_request

    if isinstance(request["inputs"], list):  # a batch job (docs/api.md, Batch jobs)
        return explain_batch_job(rt, request, revision, progress, tenant_id)
    asked, limits = ExplainRequest.from_document(request), limits_of(rt.settings)
    models = [(request["model"], revision)] + list(request.get("compare_revisions", {}).items())
    outcome: dict[str, Any] = {}
    files: dict[str, tuple[bytes, str]] = {}
    for n, (name, rev) in enumerate(models):
        adapter = rt.adapters.get(model_ref(rt, tenant_id, name, rev))

        def step(fraction: float, n: int = n) -> None:
            progress((n + fraction) / len(models))

        ex = explain_request(adapter, asked, limits, step)
        ex.result["model"] = {"name": name, "revision": adapter.revision}
        prefix = "" if n == 0 else f"compare-{name}-"
        for method, tensors in ex.tensors.items():
            if tensors:
                files[f"{prefix}{method}.safetensors"] = (_safetensors(tensors), "application/octet-stream")
        for fig, png in ex.figures.items():
            files[f"{prefix}{fig}"] = (png, "image/png")
        if n == 0:
            outcome["result"] = ex.result
        else:
            outcome.setdefault("compare", {})[name] = ex.result
    if "compare" in outcome:
        from worker.methods import compare_figures
        from worker.report import job_model_agreement

        results = {request["model"]: outcome["result"], **outcome["compare"]}
        for fig, png in compare_figures(list(asked.methods), results).items():
            files[fig] = (png, "image/png")
        outcome["model_agreement"] = job_model_agreement(results, list(asked.methods))
    files["result.json"] = (json.dumps(outcome, indent=1).encode(), "application/json")
    files["result.html"] = (_result_page(request, outcome, files), "text/html")
    return outcome, files


def _result_page(request: dict[str, Any], outcome: dict[str, Any], files: Files) -> bytes:
    """The job's self-contained result.html (docs/viewer.md): the job view of what the job document will hold."""
    from worker.render.page import result_html

    listed: list[dict[str, Any]] = [{"name": name, "content_type": kind, "bytes": len(data)}
                                    for name, (data, kind) in files.items()]
    listed.append({"name": "result.html", "content_type": "text/html", "bytes": None})
    document = {**outcome, "status": "succeeded", "model": outcome["result"].get("model") or {"name": request["model"]},
                "request": request, "artifacts": sorted(listed, key=lambda a: a["name"])}
    return result_html(document).encode()


def explain_batch_job(rt: Runtime, request: dict[str, Any], revision: str, progress,
                      tenant_id: str) -> tuple[dict, dict]:
    """A batch job: its inputs through the engine together (one padded forward pass, and one pass per method
    that batches), validated as at submit. Each input's result is a single job's result, its files are named
    item-<i>-<name>, and batch.safetensors holds every input's tensors (keys item-<i>.<method>.<tensor>)."""
    from service.validation import limits_of
    from worker.methods import explain_many
    from worker.methods.request import BatchRequest, validate_batch

    limits, name = limits_of(rt.settings), request["model"]
    adapter = rt.adapters.get(model_ref(rt, tenant_id, name, revision))
    checked = validate_batch(adapter, BatchRequest.from_document(request), limits)
    explanations = explain_many(adapter, checked, checked.inputs, limits, progress)
    files: dict[str, tuple[bytes, str]] = {}
    combined = {}
    for i, ex in enumerate(explanations):
        ex.result["model"] = {"name": name, "revision": adapter.revision}
        for method, tensors in ex.tensors.items():
            if tensors:
                files[f"item-{i}-{method}.safetensors"] = (_safetensors(tensors), "application/octet-stream")
                combined.update({f"item-{i}.{method}.{key}": t.detach().clone() for key, t in tensors.items()})
        for fig, png in ex.figures.items():
            files[f"item-{i}-{fig}"] = (png, "image/png")
    if combined:
        files["batch.safetensors"] = (_safetensors(combined), "application/octet-stream")
    outcome = {"result": {"schema_version": 1, "kind": "batch", "items": [ex.result for ex in explanations]}}
    files["result.json"] = (json.dumps(outcome, indent=1).encode(), "application/json")
    files["result.html"] = (_result_page(request, outcome, files), "text/html")
    return outcome, files


def store_artifacts(rt: Runtime, job_id: str, files: Files) -> list[Artifact]:
    """Store every file of the job or none (worker/artifacts.py, the writer audits use too)."""
    return store_files(rt.store, files, job_id=job_id)


def _safetensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
