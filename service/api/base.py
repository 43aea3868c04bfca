"""What every blueprint shares: the guarded argument parser, the documented problem responses, problem+json
answers, the converter for resource ids, and the process's runtime (read from the app, never imported from it)."""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import flask_smorest
import marshmallow as ma
from flask import Response, current_app, request
from werkzeug.routing import BaseConverter

from service.api.guard import Parser
from service.errors import PROBLEM_JSON, Problem
from service.runtime import Runtime

# Every /v1 operation can answer these: a missing or bad key, unknown or invalid query parameters, headers larger
# than the server reads, and the database unreachable (503 with Retry-After).
ALWAYS = (401, 422, 431, 503)


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details."""

    type = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True)
    detail = ma.fields.String()
    instance = ma.fields.String()
    errors = ma.fields.Dict(metadata={"description": "field errors, by field"})


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def arguments(self, schema, *args, **kwargs):
        """flask-smorest's `arguments`, the schema made once: given a class, webargs builds a new instance (and its
        nested schemas) on every request, ~0.1 ms of a submit's CPU per schema. A schema holds no per-load state."""
        return super().arguments(schema() if isinstance(schema, type) else schema, *args, **kwargs)

    def problems(self, *codes: int):
        """Document the problem+json answers an operation gives (besides ALWAYS)."""
        def decorate(view):
            for code in sorted(set(codes) | set(ALWAYS), reverse=True):
                view = self.alt_response(code, response=HTTPStatus(code).name)(view)
            return view
        return decorate


class IdConverter(BaseConverter):
    """A resource id in a path: any one segment except the names of sibling routes (e.g. /v1/audits/uploads), so
    that those routes' methods, and OPTIONS/Allow, are what the sibling really answers."""

    regex = r"(?!uploads(?![^/]))[^/]+"


class ModelNameConverter(BaseConverter):
    """A model name in a path: one segment without ':' (no model name has one), so that
    /v1/models/{name}:explain is that route's alone, its methods and OPTIONS/Allow included."""

    regex = r"[^/:]+"


def runtime() -> Runtime:
    """The Runtime of the app serving this request (create_app puts it in app.extensions)."""
    return current_app.extensions["lantern"]


def problem_response(problem: Problem, extra_headers: Any = ()) -> Response:
    resp = Response(json.dumps(problem.body(request.path)), status=problem.status, mimetype=PROBLEM_JSON)
    for k, v in dict(extra_headers).items():
        if k.lower() != "content-type":
            resp.headers[k] = v
    resp.headers.update(problem.headers)
    return resp
