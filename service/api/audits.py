"""/v1/audits: corpus audits — submit, upload a corpus file, poll progress and aggregates, cancel, download."""
from __future__ import annotations

import json
import logging

from flask import Response, g, request
from flask.views import MethodView

from service import audit_lifecycle as lifecycle
from service import audits, jobs
from service.api.base import Blueprint, runtime
from service.api.jobs import artifact_response, model_field
from service.api.schemas import AuditListQuery, AuditListSchema, AuditRequestSchema, AuditSchema, UploadSchema
from service.db import IN_FLIGHT, named_artifact, utcnow
from service.errors import invalid
from service.queue import send_job
from service.validation import check_items, validated_options
from worker.methods.request import ExplainOptions

log = logging.getLogger("lantern.api")
blp = Blueprint("audits", __name__, url_prefix="/v1/audits", description="Corpus audits: fan-out and aggregates")


@blp.route("")
class Audits(MethodView):
    @blp.arguments(AuditRequestSchema, example={"model": "minilm-rt", "methods": ["gradient"], "corpus": {
        "items": [{"text": "A gripping, moving film.", "label": "positive"}, {"text": "Dull.", "label": "negative"}]}})
    @blp.response(202, AuditSchema)
    @blp.problems(400, 413, 429)  # 429: too many audits in flight
    def post(self, body: dict):
        """Audit a corpus: every item through every model, in micro-batches over the workers."""
        rt, tenant = runtime(), g.caller.tenant_id
        with rt.db.session() as s:
            items = audits.resolve_corpus(s, rt.store, tenant, body["corpus"], rt.settings)
            chosen = audits.sample(items, body["sample"], body["seed"])
            if body.get("concepts") and "sigma" in body["methods"]:  # the items' sigma computes r_{i,c} for them
                sigma = {"concepts": body["concepts"], **body["params"].get("sigma", {})}
                body = {**body, "params": {**body["params"], "sigma": sigma}}
            revisions, asked = {}, ExplainOptions.from_document(body)
            for name in body["models"]:  # methods, layers and params checked against each model
                ref = model_field(s, tenant, name, "models")
                adapter = rt.adapters.get(ref)
                checked = validated_options(adapter, asked, rt.settings)
                check_items(adapter, chosen, rt.settings)  # every item's tokens, as its batch will encode them
                revisions[name] = ref.revision
            stored = {k: v for k, v in {**body, **checked.document()}.items() if k != "corpus"}  # params filled
            stored["corpus"] = {k: v for k, v in body["corpus"].items() if k != "items"} or {"items": len(items)}
            audit, batches = audits.create(s, tenant, stored, revisions, chosen, rt.settings)
            for job in batches:  # stamped before the commit: a send in progress never looks unsent to the reaper
                job.enqueued_at = utcnow()
            doc = audits.document(s, audit)
        for n, job in enumerate(batches):
            try:
                send_job(rt.celery, job.id, job.queue)
            except Exception as e:  # the reaper sends what the broker did not take
                log.warning("broker unavailable (%s); audit batch %s left for the reaper", type(e).__name__, job.id)
                for unsent in batches[n:]:
                    jobs.mark_unsent(rt.db, unsent.id)
                break
        return doc, 202, {"Location": f"/v1/audits/{audit.id}", "Retry-After": str(rt.settings.retry_after)}

    @blp.arguments(AuditListQuery, location="query")
    @blp.response(200, AuditListSchema)
    @blp.problems(400)  # a cursor this API did not return
    def get(self, query: dict):
        """The caller's audits, newest first."""
        with runtime().db.session() as s:
            items, cursor = audits.listing(s, g.caller.tenant_id, query["limit"], query.get("cursor"),
                                           query.get("status"))
            return {"items": [audits.document(s, a) for a in items], "next_cursor": cursor}


@blp.route("/uploads")
class Uploads(MethodView):
    @blp.response(201, UploadSchema)
    @blp.problems(400, 413)
    @blp.doc(requestBody={"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "additionalProperties": False,
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "JSONL or CSV with text (or premise + hypothesis) and label"}}}}}})
    def post(self):
        """Upload a corpus file; it is parsed and checked now, before any audit uses it."""
        rt = runtime()
        request.max_content_length = rt.settings.max_upload_bytes
        file = request.files.get("file")
        if file is None:
            raise invalid("send the corpus as multipart field 'file'", "file")
        data = file.read()
        with rt.db.session() as s:
            upload = audits.store_upload(s, rt.store, g.caller.tenant_id, file.filename or "corpus", data,
                                         rt.settings)
            return {"upload": upload.id, "items": upload.items, "bytes": upload.bytes, "filename": upload.filename}


@blp.route("/uploads/<id:upload_id>", methods=["DELETE"])
@blp.response(204)
@blp.problems(404)
def delete_upload(upload_id: str):
    """Delete an uploaded corpus file (audits made from it keep their items)."""
    rt = runtime()
    with rt.db.session() as s:
        audits.delete_upload(s, rt.store, g.caller.tenant_id, upload_id)
    return None


@blp.route("/<id:audit_id>")
class AuditById(MethodView):
    @blp.response(200, AuditSchema)
    @blp.problems(404)
    @blp.alt_response(304, description="not modified since the ETag given in If-None-Match")
    def get(self, audit_id: str):
        """Progress (done/failed/total, throughput, ETA), aggregates so far, report artifacts."""
        with runtime().db.session() as s:
            etag = lifecycle.etag(s, g.caller.tenant_id, audit_id)  # one row's version: a 304 reads nothing more
            if request.if_none_match.contains(etag):
                return Response(status=304, headers={"ETag": f'"{etag}"'})
            doc = audits.document(s, lifecycle.get(s, g.caller.tenant_id, audit_id))
        headers = {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
        if doc["status"] in IN_FLIGHT:
            headers["Retry-After"] = str(runtime().settings.retry_after)
        return Response(json.dumps(doc, sort_keys=True).encode(), status=200, mimetype="application/json",
                        headers=headers)

    @blp.response(202, AuditSchema)
    @blp.problems(404, 409)  # 409: the audit already finished
    def delete(self, audit_id: str):
        """Cancel: queued batches at once, running ones at their next item."""
        with runtime().db.session() as s:
            return audits.document(s, lifecycle.cancel(s, g.caller.tenant_id, audit_id))


@blp.route("/<id:audit_id>/artifacts/<name>")
@blp.response(200, description="the artifact's bytes, or a 302 to a presigned URL (S3)")
@blp.problems(404)
def artifact(audit_id: str, name: str):
    rt = runtime()
    with rt.db.session() as s:
        row = named_artifact(s, lifecycle.get(s, g.caller.tenant_id, audit_id), name)
    return artifact_response(rt, row)


