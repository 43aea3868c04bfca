"""The Flask app factory: blueprints, problem+json errors, bearer-key auth, request metrics."""
from __future__ import annotations

import logging
import re
import time
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from service.api.base import problem_response
from service.config import Settings
from service.db import is_unavailable
from service.errors import PROBLEM_JSON, Problem, store_full, unavailable
from service.metrics import Metrics
from service.runtime import Runtime
from service.storage import is_full

log = logging.getLogger("lantern.api")
PUBLIC = ("/healthz", "/readyz", "/metrics", "/docs", "/v1/openapi.json")


OUTAGE_RETRY_AFTER = 5  # seconds a client should wait when the database is unreachable
MAX_HEADER_BYTES = 16 * 1024  # below gunicorn's and werkzeug's own limits, so that we answer the 431 ourselves


class ProblemApi(Api):
    """flask-smorest's Api, answering every HTTP error as application/problem+json, and documenting it so."""

    DEFAULT_ERROR_RESPONSE_NAME = None  # each operation lists its own error statuses (base.Blueprint.problems)

    def _register_responses(self) -> None:
        from service.api.base import ProblemSchema

        for status in HTTPStatus:
            if status >= 400:
                self.spec.components.response(status.name, {"description": status.phrase, "content": {
                    PROBLEM_JSON: {"schema": ProblemSchema}}}, lazy=True)

    def handle_http_exception(self, error: HTTPException) -> Response:
        data = getattr(error, "data", None) or {}
        messages = data.get("messages")  # webargs: {"json": {...field errors}} or {"json": ["Invalid JSON body."]}
        body = isinstance(messages, dict) and (messages.get("json") or messages.get("form"))
        errors = body or messages if isinstance(messages, dict) else None  # a body's fields unprefixed
        detail = error.description if isinstance(error.description, str) else ""
        if error.code == 422:
            detail = "the request body does not match the schema; see errors"
        elif error.code == 400 and messages:
            detail = "the request body is not valid JSON"
        elif error.code == 413:
            limit = request.max_content_length or current_app.config["MAX_CONTENT_LENGTH"]  # uploads set their own
            detail = f"the request body is larger than {limit} bytes"
        problem = Problem(error.code or 500, error.name, detail, errors if isinstance(errors, dict) else None)
        return problem_response(problem, getattr(error, "get_headers", lambda: [])())


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    runtime = runtime or Runtime(settings or Settings.from_env())
    app = Flask("lantern")
    from service.api.base import IdConverter, ModelNameConverter

    app.url_map.converters["id"] = IdConverter
    app.url_map.converters["model"] = ModelNameConverter
    app.config.update(_api_config(runtime.settings))
    app.extensions["lantern"] = runtime
    api = ProblemApi(app)
    api.register_converter(IdConverter, lambda _: {"type": "string", "minLength": 1})
    api.register_converter(ModelNameConverter, lambda _: {"type": "string", "pattern": "^[^/:]+$"})
    app.extensions["lantern.api"] = api
    app.extensions["lantern.metrics"] = Metrics(runtime)

    from service.api import audits, catalog, docs, health, jobs
    from service.api.schemas import document

    for blp in (jobs.blp, jobs.explain_blp, audits.blp, catalog.blp):
        api.register_blueprint(blp)
    app.register_blueprint(health.blp)
    app.register_blueprint(docs.blp)
    document(api.spec)
    from service.ui import register as register_ui

    register_ui(app, runtime)  # the signed-in web pages under /ui/ (their own headers, sessions and error pages)
    _answer_errors(app, api)
    _guard_requests(app, api)
    return app


def _api_config(settings: Settings) -> dict[str, Any]:
    from service.api import docs

    return dict(
        API_TITLE="Lantern",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="v1/openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=docs.SWAGGER_UI_URL,  # vendored in the package: the pages work offline
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},  # no badge fetched from swagger.io
        OPENAPI_REDOC_PATH="redoc",
        OPENAPI_REDOC_URL=docs.REDOC_URL,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_SPEC_OPTIONS={
            "info": {"description": "Explanation jobs for PyTorch NLP models. Every /v1 call except this "
                                    "document needs `Authorization: Bearer <key>`."},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}],
        },
    )


def _answer_errors(app: Flask, api: ProblemApi) -> None:
    """Every error as problem+json: ours, HTTP's, a full store (507), the database's outage (503, never 500)."""
    @app.errorhandler(Problem)
    def _problem(problem: Problem) -> Response:
        return problem_response(problem)

    @app.errorhandler(Exception)
    def _crash(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            return api.handle_http_exception(error)
        if is_full(error):
            log.warning("object store full on %s %s", request.method, request.path)
            return problem_response(store_full("this request"))
        if is_unavailable(error):  # a dependency's outage, not a bug: the client should come back
            log.warning("database unreachable on %s %s (%s)", request.method, request.path, type(error).__name__)
            return problem_response(unavailable("the database is unreachable; try again shortly",
                                                OUTAGE_RETRY_AFTER))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(500, "Internal Server Error", "an unexpected error; it was logged"))


def _guard_requests(app: Flask, api: ProblemApi) -> None:
    """Before a view: header size, the caller's key, the query; after it: the request metrics."""
    runtime: Runtime = app.extensions["lantern"]
    metrics: Metrics = app.extensions["lantern.metrics"]

    @app.before_request
    def _header_size() -> None:
        g.started = time.perf_counter()
        if sum(len(k) + len(v) + 4 for k, v in request.headers.items()) > MAX_HEADER_BYTES:
            raise Problem(431, "Request header fields too large",
                          f"the request's headers are larger than {MAX_HEADER_BYTES} bytes")

    @app.before_request
    def _authenticate() -> None:
        if request.method == "OPTIONS":  # only says which methods a path has (and CORS preflights carry no key)
            return
        if request.path in PUBLIC or request.path.startswith("/docs") or not request.path.startswith("/v1"):
            return
        from service.auth import authenticate

        with runtime.db.session() as s:
            g.caller = authenticate(s, request.headers.get("Authorization"))
        _check_query(api)

    @app.after_request
    def _observe(resp: Response) -> Response:
        metrics.observe(request, resp, time.perf_counter() - g.get("started", time.perf_counter()))
        return resp


def _check_query(api: ProblemApi) -> None:
    """Query parameters the operation does not document are a 422, not silently ignored; query and path values
    must be valid text."""
    from service.api.guard import check_strings

    if request.url_rule is None:
        return
    method = "get" if request.method == "HEAD" else request.method.lower()
    path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", request.url_rule.rule)  # as flask-smorest documents it
    known = _query_names(api).get((path, method), set())
    unknown = sorted(set(request.args) - known)
    if unknown:
        raise Problem(422, "Invalid request", f"unknown query parameter(s): {', '.join(unknown)}",
                      {"query": {name: ["Unknown field."] for name in unknown}})
    check_strings(request.args, "query")
    check_strings(request.view_args or {}, "path")


def _query_names(api: ProblemApi) -> dict[tuple[str, str], set[str]]:
    """(OpenAPI path, method) -> the query parameters the OpenAPI document gives it; built once."""
    app = current_app
    if "lantern.query" not in app.extensions:
        names = {}
        for path, ops in api.spec.to_dict()["paths"].items():
            for method, op in ops.items():
                if isinstance(op, dict):
                    names[(path, method)] = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
        app.extensions["lantern.query"] = names
    return app.extensions["lantern.query"]
