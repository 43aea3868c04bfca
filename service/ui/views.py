"""The web UI's pages under /ui/: sign-in, jobs (list, submit, one job), audits (list, one audit), artifacts.
Every page reads through the API's own tenant-scoped functions (service.jobs, service.audit_lifecycle) as g.caller,
so the tenant boundary is the API's; pages render on the server and work without JavaScript."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import marshmallow as ma
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

import service.ui.forms as forms
import service.ui.session as session
from service import audit_lifecycle as lifecycle
from service import audits, jobs, models
from service.api.base import runtime
from service.db import FINISHED, Audit, is_unavailable, named_artifact
from service.domain import JobStatus
from service.errors import Problem
from service.ui.artifacts import artifact_response

log = logging.getLogger("lantern.ui")
bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")
PAGE = 50  # rows per list page
STATUSES = [s.value for s in JobStatus]
OPEN = ("login",)  # endpoints a visitor without a session may reach
# a page runs only the scripts and styles it loads from /ui/static; its data rides in JSON blocks (never run)
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
OUTAGE_RETRY_AFTER = 5


# --- sign-in -----------------------------------------------------------------------------------------------


@bp.before_request
def _signed_in() -> Any:
    if not current_app.extensions.get("lantern.ui"):
        abort(503, "the web UI needs LANTERN_SECRET_KEY to sign its cookies; set it on every API process")
    endpoint = (request.endpoint or "").removeprefix("ui.")
    if request.method == "POST":
        session.check_csrf()
    if endpoint in OPEN:
        return None
    caller = session.current_caller(runtime())
    if caller is None:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
    g.caller = caller
    return None


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error = None
    if request.method == "POST":
        try:
            caller = session.sign_in(runtime(), request.form.get("key", ""))
        except Problem as e:
            error = e.detail
        else:
            log.info("ui sign-in: tenant %s, key %s", caller.tenant_id, caller.key_id)
            return redirect(_local(request.args.get("next")) or url_for("ui.jobs_page"))
    return render_template("login.html", error=error), 401 if error else 200


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    session.sign_out()
    return redirect(url_for("ui.login"))


def _local(target: str | None) -> str | None:
    """Only a path under /ui/ of this site may be where sign-in returns to (no open redirect)."""
    if not target:
        return None
    parts = urlsplit(target)
    ok = not parts.scheme and not parts.netloc and target.startswith("/ui/") and "\\" not in target
    return target if ok else None


# --- jobs --------------------------------------------------------------------------------------------------


@bp.route("/jobs")
def jobs_page() -> Any:
    listing, cursor, status, model = _job_rows()
    return render_template("jobs.html", rows=listing, cursor=cursor, status=status, model=model,
                           statuses=STATUSES, in_flight=any(r["status"] not in FINISHED for r in listing))


@bp.route("/jobs.json")
def jobs_json() -> Any:
    listing, cursor, _, _ = _job_rows()
    return _no_store(jsonify({"items": listing, "next_cursor": cursor}))


def _job_rows() -> tuple[list[dict], str | None, str, str]:
    status = request.args.get("status", "")
    model = request.args.get("model", "")[:100]
    if status and status not in STATUSES:
        abort(400, f"unknown status; one of {', '.join(STATUSES)}")
    with runtime().db.session() as s:
        items, cursor = jobs.listing(s, g.caller.tenant_id, PAGE, request.args.get("cursor") or None,
                                     status or None, model or None)
        rows = [_job_row(jobs.document(j, [], with_result=False)) for j in items]
    return rows, cursor, status, model


def _job_row(doc: dict) -> dict:
    timings = doc["timings"]
    duration = timings["total_seconds"] if timings["total_seconds"] is not None else timings["queued_seconds"]
    return {"id": doc["id"], "status": doc["status"], "progress": doc["progress"], "model": doc["model"]["name"],
            "methods": doc["request"].get("methods", []), "created_at": doc["created_at"],
            "duration": duration, "url": url_for("ui.job_page", job_id=doc["id"])}


@bp.route("/jobs/new", methods=["GET", "POST"])
def new_job() -> Any:
    from service.api.catalog import method_catalog
    from service.api.jobs import submit
    from service.api.schemas import JobRequestSchema

    catalog = method_catalog()
    errors: list[str] = []
    if request.method == "POST":
        body = forms.request_body(request.form, catalog)
        try:
            doc = submit(JobRequestSchema().load(body), None)
        except ma.ValidationError as e:
            errors = forms.field_errors(e.messages)
        except Problem as e:
            errors = forms.field_errors(e.errors or {}) or [e.detail]
        else:
            return redirect(url_for("ui.job_page", job_id=doc["id"]), 303)
    with runtime().db.session() as s:
        model_names = [m["name"] for m in models.listing(s, g.caller.tenant_id)]
    return render_template("new_job.html", models=model_names, methods=forms.param_fields(catalog),
                           form=request.form, errors=errors), 422 if errors else 200


@bp.route("/jobs/<id:job_id>")
def job_page(job_id: str) -> Any:
    doc = _job_document(job_id)
    view = None
    if doc["status"] == JobStatus.SUCCEEDED:
        view = _render_job(doc, lambda name: url_for("ui.job_artifact", job_id=job_id, name=name))
    return render_template("job.html", job=doc, view=view, finished=doc["status"] in FINISHED,
                           artifacts=_links(doc["artifacts"], "ui.job_artifact", job_id=job_id))


@bp.route("/jobs/<id:job_id>/status.json")
def job_status(job_id: str) -> Any:
    doc = _job_document(job_id, with_result=False)
    return _no_store(jsonify({key: doc[key] for key in ("id", "status", "progress", "error")}
                             | {"finished": doc["status"] in FINISHED}))


def _job_document(job_id: str, with_result: bool = True) -> dict:
    with runtime().db.session() as s:
        job = jobs.get(s, g.caller.tenant_id, job_id)  # 404 for another tenant's job, as in the API
        return jobs.document(job, jobs.artifacts_of(s, job.id), with_result=with_result)


@bp.route("/jobs/<id:job_id>/artifacts/<name>")
def job_artifact(job_id: str, name: str) -> Any:
    with runtime().db.session() as s:
        row = named_artifact(s, jobs.get(s, g.caller.tenant_id, job_id), name)
    return artifact_response(runtime(), row)


# --- audits ------------------------------------------------------------------------------------------------


@bp.route("/audits")
def audits_page() -> Any:
    with runtime().db.session() as s:
        rows = s.scalars(select(Audit).where(Audit.tenant_id == g.caller.tenant_id)
                         .order_by(Audit.created_at.desc(), Audit.id.desc()).limit(PAGE)).all()
        listing = [_audit_row(audits.document(s, a)) for a in rows]
    return render_template("audits.html", rows=listing)


def _audit_row(doc: dict) -> dict:
    return {"id": doc["id"], "status": doc["status"], "progress": doc["progress"], "counts": doc["counts"],
            "models": doc["models"], "methods": doc["methods"], "created_at": doc["created_at"],
            "url": url_for("ui.audit_page", audit_id=doc["id"])}


@bp.route("/audits/<id:audit_id>")
def audit_page(audit_id: str) -> Any:
    with runtime().db.session() as s:
        audit = lifecycle.get(s, g.caller.tenant_id, audit_id)
        doc = audits.document(s, audit)
        items = lifecycle.item_results(s, audit.id)
    view = _render_audit(doc, items, lambda name: url_for("ui.audit_artifact", audit_id=audit_id, name=name))
    return render_template("audit.html", audit=doc, view=view, finished=doc["status"] in FINISHED,
                           artifacts=_links(doc["artifacts"], "ui.audit_artifact", audit_id=audit_id))


@bp.route("/audits/<id:audit_id>/status.json")
def audit_status(audit_id: str) -> Any:
    with runtime().db.session() as s:
        doc = audits.document(s, lifecycle.get(s, g.caller.tenant_id, audit_id))
    keys = ("id", "status", "progress", "counts", "items_per_second", "eta_seconds", "error")
    return _no_store(jsonify({key: doc[key] for key in keys} | {"finished": doc["status"] in FINISHED}))


@bp.route("/audits/<id:audit_id>/artifacts/<name>")
def audit_artifact(audit_id: str, name: str) -> Any:
    with runtime().db.session() as s:
        row = named_artifact(s, lifecycle.get(s, g.caller.tenant_id, audit_id), name)
    return artifact_response(runtime(), row)


# --- headers and error pages ------------------------------------------------------------------------------


@bp.after_request
def secured(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", PAGE_CSP)  # artifacts set their own, stricter one
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers.setdefault("Cache-Control", "no-store")  # pages show a tenant's data: never kept by a cache
    return resp


@bp.errorhandler(Exception)
def _error_page(error: Exception) -> Response:
    """The UI's errors as pages (the API answers problem+json): 404 for another tenant's job, 403 for a failed
    CSRF check, 503 with Retry-After when the database is down."""
    headers: dict[str, str] = {}
    if isinstance(error, Problem):
        status, title, detail = error.status, error.title, error.detail
        headers.update({k: v for k, v in error.headers.items() if k == "Retry-After"})
    elif isinstance(error, HTTPException):
        status, title, detail = error.code or 500, error.name, error.description or ""
    elif is_unavailable(error):
        log.warning("database unreachable on %s %s (%s)", request.method, request.path, type(error).__name__)
        status, title, detail = 503, "Unavailable", "the database is unreachable; try again shortly"
        headers["Retry-After"] = str(OUTAGE_RETRY_AFTER)
    else:
        log.exception("unhandled error on %s %s", request.method, request.path)
        status, title, detail = 500, "Internal Server Error", "an unexpected error; it was logged"
    page = render_template("error.html", status=status, title=title, detail=detail)
    return secured(Response(page, status=status, headers=headers, mimetype="text/html"))


# --- the engine's views (worker/render/page), when present -------------------------------------------------


def _render_job(doc: dict, artifact_url: Callable[[str], str]) -> Markup | None:
    try:
        from worker.render.page import job_view
    except ImportError:  # the job view is not in this build: the page shows its own summary
        return None
    return job_view(doc, artifact_url)


def _render_audit(doc: dict, items: list[dict], artifact_url: Callable[[str], str]) -> Markup | None:
    try:
        from worker.render.page import audit_view
    except ImportError:
        return None
    return audit_view(doc, items, artifact_url)


def _links(artifacts: list[dict], endpoint: str, **ids: Any) -> list[dict]:
    return [{**a, "href": url_for(endpoint, name=a["name"], **ids)} for a in artifacts]


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    return resp
