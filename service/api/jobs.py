"""/v1/jobs: submit, read (ETag), list, cancel, download artifacts."""
from __future__ import annotations

import json
import logging

from flask import Response, g, redirect, request, stream_with_context
from flask.views import MethodView
from sqlalchemy import select

from service import jobs, models
from service.api.base import Blueprint, runtime
from service.api.schemas import IdempotencyHeaders, JobListQuery, JobListSchema, JobRequestSchema, JobSchema
from service.db import Artifact, utcnow
from service.domain import IN_FLIGHT
from service.errors import Problem, invalid, not_found
from service.queue import send_job
from service.storage import ObjectNotFound
from service.validation import validated
from worker.methods.request import ExplainRequest

log = logging.getLogger("lantern.api")
blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Explanation jobs: submit, poll, cancel")


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobRequestSchema, example={"model": "minilm-rt", "inputs": {"text": "A gripping, moving film."},
                                              "methods": ["gradient"]})
    @blp.arguments(IdempotencyHeaders, location="headers")
    @blp.response(202, JobSchema)
    @blp.problems(400, 409, 413, 429)  # 409: Idempotency-Key reused with another body; 429: over a tenant limit
    def post(self, body: dict, headers: dict):
        """Submit one explanation job. Answers 202 at once; poll the Location."""
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
    with rt.db.session() as s:
        replay = jobs.find_idempotent(s, caller.tenant_id, key, digest)
        if replay is not None:
            return jobs.document(replay, jobs.artifacts_of(s, replay.id))
        ref = model_field(s, caller.tenant_id, body["model"], "model")
        asked = ExplainRequest.from_document(body)
        checked = validated(rt.adapters.get(ref), asked, rt.settings)
        compare = {}
        for other in body["compare_with"]:
            other_ref = model_field(s, caller.tenant_id, other, "compare_with")
            validated(rt.adapters.get(other_ref), asked, rt.settings)
            compare[other] = other_ref.revision
        jobs.check_limits(s, caller.tenant_id, rt.settings)
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


def model_field(session, tenant_id: str, name: str, field: str) -> models.ModelRef:
    """In a request body an unknown (or another tenant's) model is a field error, not a missing resource."""
    try:
        return models.resolve(session, tenant_id, name)
    except Problem as e:
        raise invalid(f"unknown model {name!r}; see GET /v1/models", field) from e


def _accepted(doc: dict):
    rt = runtime()
    return doc, 202, {"Location": f"/v1/jobs/{doc['id']}", "Retry-After": str(rt.settings.retry_after)}


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
        job = jobs.get(s, g.caller.tenant_id, job_id)
        row = s.scalars(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name)).first()
        if row is None:
            raise not_found(f"artifact {name!r} of job {job_id}")
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
