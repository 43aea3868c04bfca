"""/v1/jobs: submit, read (ETag), list, cancel, download artifacts."""
from __future__ import annotations

import json
import logging
import time

from flask import Response, g, redirect, request, stream_with_context
from flask.views import MethodView
from sqlalchemy import select

from service import jobs, models
from service.api.base import Blueprint, runtime
from service.api.schemas import (
    ExplainInstancesSchema,
    ExplanationsSchema,
    IdempotencyHeaders,
    JobListQuery,
    JobListSchema,
    JobRequestSchema,
    JobSchema,
)
from service.db import Artifact, Job, named_artifact, utcnow
from service.domain import IN_FLIGHT, JobStatus
from service.errors import Problem, conflict, invalid, not_found
from service.queue import send_job
from service.storage import ObjectNotFound
from service.validation import validated, validated_batch
from worker.methods.request import BatchRequest, ExplainRequest, request_of

log = logging.getLogger("lantern.api")
blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Explanation jobs: submit, poll, cancel")
explain_blp = Blueprint("explain", __name__, url_prefix="/v1/models",
                        description="Synchronous explanations in KServe V1's shape: a job, waited on")


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobRequestSchema, example={"model": "minilm-rt", "inputs": {"text": "A gripping, moving film."},
                                              "methods": ["gradient"]})
    @blp.arguments(IdempotencyHeaders, location="headers")
    @blp.response(202, JobSchema)
    @blp.problems(400, 409, 413, 429)  # 409: Idempotency-Key reused with another body; 429: over a tenant limit
    def post(self, body: dict, headers: dict):
        """Submit one explanation job (one input, or a list of them: a batch job). Answers 202 at once; poll the
        Location."""
        return _accepted(submit(body, headers.get("key")))

    @blp.arguments(JobListQuery, location="query")
    @blp.response(200, JobListSchema)
    @blp.problems(400)  # a cursor this API did not return
    def get(self, query: dict):
        """The caller's jobs, newest first (without results)."""
        with runtime().db.session() as s:
            items, cursor = jobs.listing(s, g.caller.tenant_id, query["limit"], query.get("cursor"),
                                         query.get("status"), query.get("model"))
            return {"items": [jobs.document(j, jobs.artifacts_of(s, j.id), with_result=False) for j in items],
                    "next_cursor": cursor}


def submit(body: dict, key: str | None) -> dict:
    """Validate and queue a job for g.caller (the API's POST /v1/jobs and the web UI's form): the job document.
    `body` is a loaded JobRequestSchema; `key` an Idempotency-Key (its replay gives the earlier job)."""
    rt, caller = runtime(), g.caller
    digest = jobs.request_hash(body)
    with rt.db.session(autocommit=True) as s:  # its one write, the INSERT, is its last statement
        replay = jobs.find_idempotent(s, caller.tenant_id, key, digest)
        if replay is not None:
            return jobs.document(replay, jobs.artifacts_of(s, replay.id))
        found, limits = jobs.model_and_limits(s, caller.tenant_id, body["model"], rt.settings)
        ref = field_ref(body["model"], "model", found)
        asked = request_of(body)
        checked: ExplainRequest | BatchRequest
        if isinstance(asked, ExplainRequest):
            checked = validated(rt.adapters.get(ref), asked, rt.settings)
        else:
            refuse_single_fields(asked.inputs, body)
            checked = validated_batch(rt.adapters.get(ref), asked, rt.settings)
        compare = {}
        for other in body["compare_with"]:
            other_ref = model_field(s, caller.tenant_id, other, "compare_with")
            validated(rt.adapters.get(other_ref), ExplainRequest.from_document(body), rt.settings)
            compare[other] = other_ref.revision
        limits.check(rt.settings)  # read with the model, judged after it and the request: a 400 before a 429
        row = {**body, **checked.document(), "compare_revisions": compare}  # the body's keys, params filled
        # enqueued_at stamped before the commit: a send in progress never looks unsent
        job = jobs.create(s, caller.tenant_id, row, ref.revision, rt.settings.job_queue, key, digest, utcnow())
        doc = jobs.document(job, [])
    try:
        send_job(rt.celery, job.id, job.queue)
    except Exception as e:  # the row is the truth: the reaper sends it when the broker is back
        jobs.mark_unsent(rt.db, job.id)
        log.warning("broker unavailable (%s); job %s stays queued for the reaper", type(e).__name__, job.id)
    return doc


def refuse_single_fields(inputs, body: dict) -> None:
    """A batch explains texts or premise + hypothesis pairs, each on its own model: the fields that go with one
    input (compare_with, and a generative model's) are refused by name."""
    for field in ("compare_with", "generate", "contrast"):
        if body.get(field):
            raise invalid(f"{field} takes a single input, not a list of inputs", field)
    for position, one in enumerate(inputs):
        if "prompt" in one:
            raise invalid(f"input {position}: a batch takes texts or premise + hypothesis pairs, not prompts",
                          "inputs")


def model_field(session, tenant_id: str, name: str, field: str) -> models.ModelRef:
    """The model `name` of a request body's `field`, read now (see field_ref)."""
    return field_ref(name, field, models.newest_row(session, tenant_id, name))


def field_ref(name: str, field: str, row) -> models.ModelRef:
    """In a request body an unknown (or another tenant's) model is a field error, not a missing resource. `row`:
    the model's newest registered revision as read (service.models.ref_of)."""
    try:
        return models.ref_of(name, row)
    except Problem as e:
        raise invalid(f"unknown model {name!r}; see GET /v1/models", field) from e


def _accepted(doc: dict):
    rt = runtime()
    return doc, 202, {"Location": f"/v1/jobs/{doc['id']}", "Retry-After": str(rt.settings.retry_after)}


@explain_blp.route("/<model:name>:explain", methods=["POST"])
@explain_blp.arguments(ExplainInstancesSchema, example={"instances": [{"text": "A gripping, moving film."}],
                                                        "methods": ["gradient"], "timeout": 10})
@explain_blp.arguments(IdempotencyHeaders, location="headers")
@explain_blp.response(200, ExplanationsSchema)
@explain_blp.alt_response(202, schema=JobSchema, description="not done within the timeout: the job, as POST "
                                                             "/v1/jobs answers it (poll the Location)")
@explain_blp.problems(400, 404, 409, 413, 429, 500, 504, 507)  # 409: cancelled; 5xx: the job's own error
def explain(body: dict, headers: dict, name: str):
    """Explain instances now: one job (a batch for several instances), waited on up to `timeout` seconds."""
    rt = runtime()
    with rt.db.session() as s:
        models.resolve(s, g.caller.tenant_id, name)  # in the path, an unknown model is a 404
    instances, asked = body.pop("instances"), body.pop("timeout")
    job = {**body, "model": name, "inputs": instances[0] if len(instances) == 1 else instances, "compare_with": []}
    doc = wait_for_job(submit(job, headers.get("key")), min(asked, rt.settings.sync_timeout_cap))
    if doc["status"] in IN_FLIGHT:  # as POST /v1/jobs answers (a Response: the 200 schema is not this one)
        body, status, headers = _accepted(doc)
        return Response(json.dumps(JobSchema().dump(body)), status, headers, mimetype="application/json")
    if doc["status"] == JobStatus.CANCELLED:
        raise conflict(f"job {doc['id']} was cancelled")
    if doc["status"] == JobStatus.FAILED:
        error = doc["error"] or {}
        raise Problem(error.get("status", 500), error.get("title", "Job failed"), error.get("detail", ""),
                      headers={"Location": f"/v1/jobs/{doc['id']}"})
    result = doc.pop("result")
    return {"explanations": result["items"] if result.get("kind") == "batch" else [result], "job": doc}


WAIT_POLL_CAP = 0.25  # seconds; measured: a 1 s cap made a ~2.5 s job's call 0.8 s slower than 0.5 s polling


def wait_for_job(doc: dict, timeout: float) -> dict:
    """The job's document once it has ended, or as it is after `timeout` seconds. Its status is read with backoff
    (50 ms, growing by half up to WAIT_POLL_CAP): a job is seen at most that long after it ends, and a waiting call
    costs a few small queries a second."""
    rt, job_id, delay = runtime(), doc["id"], 0.05
    deadline = time.monotonic() + timeout
    status = doc["status"]
    while status in IN_FLIGHT and time.monotonic() < deadline:
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 1.5, WAIT_POLL_CAP)
        with rt.db.session() as s:
            status = s.scalar(select(Job.status).where(Job.id == job_id))
    if status == doc["status"] and status in IN_FLIGHT:
        return doc
    with rt.db.session() as s:
        return jobs.document(jobs.get(s, g.caller.tenant_id, job_id), jobs.artifacts_of(s, job_id))


@blp.route("/<id:job_id>")
class JobById(MethodView):
    @blp.response(200, JobSchema)
    @blp.alt_response(304, description="not modified since the ETag given in If-None-Match")
    @blp.problems(404)
    def get(self, job_id: str):
        """The job document: status, progress, timings, attempts, error, result, artifacts."""
        with runtime().db.session() as s:
            etag = jobs.etag(s, g.caller.tenant_id, job_id)  # cheap: no result is read for a 304
            if request.if_none_match.contains(etag):
                return Response(status=304, headers={"ETag": f'"{etag}"'})
            job = jobs.get(s, g.caller.tenant_id, job_id)
            doc = jobs.document(job, jobs.artifacts_of(s, job.id))
        body = json.dumps(doc, sort_keys=True).encode()
        headers = {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
        if doc["status"] in IN_FLIGHT:
            headers["Retry-After"] = str(runtime().settings.retry_after)
        return Response(body, status=200, mimetype="application/json", headers=headers)

    @blp.response(202, JobSchema)
    @blp.problems(404, 409)  # 409: the job already finished
    def delete(self, job_id: str):
        """Cancel: a queued job at once, a running one at its next step."""
        with runtime().db.session() as s:
            job = jobs.cancel(s, g.caller.tenant_id, job_id)
            return jobs.document(job, jobs.artifacts_of(s, job.id))


@blp.route("/<id:job_id>/artifacts/<name>")
@blp.response(200, description="the artifact's bytes, or a 302 to a presigned URL (S3)")
@blp.problems(404)
def artifact(job_id: str, name: str):
    """Download one artifact of a job."""
    rt = runtime()
    with rt.db.session() as s:
        row = named_artifact(s, jobs.get(s, g.caller.tenant_id, job_id), name)
    return artifact_response(rt, row)


def artifact_response(rt, row: Artifact):
    """The artifact's bytes streamed, or a 302 to a presigned URL when the store has them (S3)."""
    url = rt.store.presigned_url(row.storage_key, row.name, rt.settings.presign_seconds)
    if url:
        return redirect(url, 302)
    try:
        chunks = rt.store.stream(row.storage_key)
        first = next(chunks, b"")
    except ObjectNotFound:
        raise not_found(f"the stored bytes of artifact {row.name!r}") from None

    def body():
        yield first
        yield from chunks

    return Response(stream_with_context(body()), mimetype=row.content_type, headers={
        "Content-Length": str(row.bytes), "Content-Disposition": f'attachment; filename="{row.name}"',
        "ETag": f'"{row.sha256}"', "X-Content-Type-Options": "nosniff"})
