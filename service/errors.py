"""RFC 9457 problem details: every error the API answers is one of these."""
from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error with an HTTP status, a short title, a useful detail and (for validation) field errors."""

    def __init__(self, status: int, title: str, detail: str = "", errors: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, type_: str = "about:blank") -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers, self.type = errors, headers or {}, type_

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


def conflict(detail: str) -> Problem:
    return Problem(409, "Conflict", detail)


def too_many(detail: str, retry_after: int) -> Problem:
    return Problem(429, "Too many requests", detail, headers={"Retry-After": str(max(1, retry_after))})


def unavailable(detail: str, retry_after: int) -> Problem:
    return Problem(503, "Service unavailable", detail, headers={"Retry-After": str(max(1, retry_after))})


def store_full(what: str) -> Problem:
    return Problem(507, "Insufficient storage", f"the object store is full; nothing of {what} was kept. "
                                                "Try again once space is freed.")
