"""RFC 9457 problem details: every error the API answers is one of these.

Each kind of problem has its own `type` URI, `/problems/<slug>` (the slug of its title), relative to the API's own
URL, where `GET /problems/<slug>` describes it; KINDS lists them all (docs/api.md, Errors)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPES = "/problems/"


@dataclass(frozen=True)
class ProblemKind:
    title: str
    status: int
    when: str

    @property
    def slug(self) -> str:
        return slug(self.title)


def slug(title: str) -> str:
    """"Request Entity Too Large" -> "request-entity-too-large" (HTTP's own names and ours alike)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def problem_type(title: str) -> str:
    return PROBLEM_TYPES + slug(title)


# Every problem the API answers or a job or audit records, by slug: its title (as tests and clients read it today),
# its usual status and when it happens.
KINDS = {kind.slug: kind for kind in (
    ProblemKind("Bad request", 400, "the body is not JSON (or not UTF-8), or JSON nested deeper than 32 levels"),
    ProblemKind("Bad cursor", 400, "a list's `cursor` that this API did not return"),
    ProblemKind("Unauthorized", 401, "no, malformed, unknown, expired or revoked key"),
    ProblemKind("Forbidden", 403, "a server-side model path while LANTERN_MODEL_ROOT is unset, or outside it"),
    ProblemKind("Not found", 404, "an unknown route, or an id, name or artifact this tenant does not have"),
    ProblemKind("Method not allowed", 405, "a method the route does not have"),
    ProblemKind("Conflict", 409, "a reused Idempotency-Key, cancelling a finished job, a model in use, …"),
    ProblemKind("Request entity too large", 413, "a body or upload over its size limit"),
    ProblemKind("Unsupported media type", 415, "a model registration neither multipart nor JSON"),
    ProblemKind("Unprocessable entity", 422, "the body does not match the schema (`errors` per field)"),
    ProblemKind("Invalid request", 422, "a request the engine would refuse, an unknown query parameter, invalid "
                                        "text, a corpus or bundle that cannot be read (`errors` per field)"),
    ProblemKind("Too many requests", 429, "over a tenant's in-flight or per-minute limit (with Retry-After)"),
    ProblemKind("Request header fields too large", 431, "request headers over 16 KiB"),
    ProblemKind("Internal server error", 500, "an unexpected error (logged; the detail says nothing more)"),
    ProblemKind("Service unavailable", 503, "a dependency (the database) is unreachable (with Retry-After)"),
    ProblemKind("Not ready", 503, "`/readyz`: a check failed (`errors.checks`)"),
    ProblemKind("Insufficient storage", 507, "the object store is full; nothing was kept"),
    # recorded in a job's or an audit's `error`, not answered over HTTP
    ProblemKind("Cannot explain this input", 422, "a job's input the model cannot encode or explain"),
    ProblemKind("Input too long", 422, "an audit item over LANTERN_MAX_TOKENS"),
    ProblemKind("Time limit", 504, "a job ran past LANTERN_SOFT_TIME_LIMIT"),
    ProblemKind("Job failed", 500, "a job's unexpected error"),
    ProblemKind("Job dead-lettered", 500, "a job delivered LANTERN_MAX_ATTEMPTS times without finishing"),
    ProblemKind("Not processed", 500, "an audit item whose micro-batch was dead-lettered"),
    ProblemKind("Audit failed", 500, "no item of an audit could be explained, or its report could not be made"),
)}


class Problem(Exception):
    """An error with an HTTP status, a short title, a useful detail and (for validation) field errors."""

    def __init__(self, status: int, title: str, detail: str = "", errors: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers, self.type = errors, headers or {}, problem_type(title)

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        return body


def invalid(detail: str, field: str | None = None, errors: dict[str, Any] | None = None) -> Problem:
    return Problem(422, "Invalid request", detail, errors or ({field: [detail]} if field else None))


def not_found(what: str) -> Problem:
    return Problem(404, "Not found", f"{what} not found")


def conflict(detail: str, retry_after: int | None = None) -> Problem:
    """409; with `retry_after` where the conflict passes by itself (a concurrent copy still being committed)."""
    return Problem(409, "Conflict", detail, headers={"Retry-After": str(retry_after)} if retry_after else None)


def too_many(detail: str, retry_after: int) -> Problem:
    return Problem(429, "Too many requests", detail, headers={"Retry-After": str(max(1, retry_after))})


def unavailable(detail: str, retry_after: int) -> Problem:
    return Problem(503, "Service unavailable", detail, headers={"Retry-After": str(max(1, retry_after))})


def store_full(what: str) -> Problem:
    return Problem(507, "Insufficient storage", f"the object store is full; nothing of {what} was kept. "
                                                "Try again once space is freed.")
