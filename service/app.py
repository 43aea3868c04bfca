"""The Flask app factory: blueprints, problem+json errors, bearer-key auth, request metrics."""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, current_app, g, json, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from service.config import Settings
from service.errors import PROBLEM_JSON, Problem
from service.metrics import Metrics
from service.runtime import Runtime

log = logging.getLogger("lantern.api")
PUBLIC = ("/healthz", "/readyz", "/metrics", "/docs", "/v1/openapi.json")


class ProblemApi(Api):
    """flask-smorest's Api, answering every HTTP error as application/problem+json."""

    def handle_http_exception(self, error: HTTPException) -> Response:
        errors = None
        data = getattr(error, "data", None) or {}
        if "messages" in data:  # webargs validation: {"json": {...field errors}}
            messages = data["messages"]
            errors = messages.get("json", messages) if isinstance(messages, dict) else messages
        detail = error.description if isinstance(error.description, str) else ""
        if error.code == 422:
            detail = "the request body does not match the schema; see errors"
        elif error.code == 400 and "JSON" in json.dumps(errors or "").upper():
            detail = "the request body is not valid JSON"
        elif error.code == 413:
            detail = f"the request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
        problem = Problem(error.code or 500, error.name, detail, errors)
        return problem_response(problem, getattr(error, "get_headers", lambda: [])())


def problem_response(problem: Problem, extra_headers: Any = ()) -> Response:
    resp = Response(json.dumps(problem.body(request.path)), status=problem.status, mimetype=PROBLEM_JSON)
    for k, v in dict(extra_headers).items():
        if k.lower() != "content-type":
            resp.headers[k] = v
    resp.headers.update(problem.headers)
    return resp


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    runtime = runtime or Runtime(settings or Settings.from_env())
    settings = runtime.settings
    app = Flask("lantern")
    app.config.update(
        API_TITLE="Lantern",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="v1/openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_SPEC_OPTIONS={
            "info": {"description": "Explanation jobs for PyTorch NLP models. Every /v1 call except this "
                                    "document needs `Authorization: Bearer <key>`."},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}],
        },
    )
    app.extensions["lantern"] = runtime
    api = ProblemApi(app)
    app.extensions["lantern.api"] = api
    metrics = Metrics(runtime)
    app.extensions["lantern.metrics"] = metrics

    from service.api import audits, catalog, health, jobs

    api.register_blueprint(jobs.blp)
    api.register_blueprint(audits.blp)
    api.register_blueprint(catalog.blp)
    app.register_blueprint(health.blp)

    @app.errorhandler(Problem)
    def _problem(problem: Problem) -> Response:
        return problem_response(problem)

    @app.errorhandler(Exception)
    def _crash(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            return api.handle_http_exception(error)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(500, "Internal Server Error", "an unexpected error; it was logged"))

    @app.before_request
    def _authenticate() -> None:
        g.started = time.perf_counter()
        if request.path in PUBLIC or request.path.startswith("/docs") or not request.path.startswith("/v1"):
            return
        from service.auth import authenticate

        with runtime.db.session() as s:
            g.caller = authenticate(s, request.headers.get("Authorization"))

    @app.after_request
    def _observe(resp: Response) -> Response:
        metrics.observe(request, resp, time.perf_counter() - g.get("started", time.perf_counter()))
        return resp

    return app


def runtime() -> Runtime:
    return current_app.extensions["lantern"]
