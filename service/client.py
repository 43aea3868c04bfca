"""A small Python client for the Lantern API: submit, get, wait, download.

    from service.client import Client
    c = Client("http://127.0.0.1:8000", "lt_...")
    job = c.wait(c.submit({"model": "minilm-rt", "inputs": {"text": "A fine film."}, "methods": ["gradient"]}))
"""
from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from service.domain import FINISHED

# entries that carry no model content (the server's worker.models.bundle._IGNORED); every other file, dot-files
# included, is part of the model and of its revision
SKIPPED_IN_BUNDLES = frozenset({".git", "__pycache__", ".gitattributes", ".DS_Store", ".complete"})


class ApiError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        detail = problem.get("detail") or problem.get("title") or ""
        super().__init__(f"{status} {problem.get('title', '')}: {detail}".strip())


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("LANTERN_URL", "http://127.0.0.1:8000")).rstrip("/")
        self.session = requests.Session()
        key = key or os.environ.get("LANTERN_API_KEY")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        resp = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kw)
        if resp.status_code >= 400:
            try:
                problem = resp.json()
            except ValueError:
                problem = {"title": resp.reason, "detail": resp.text[:200]}
            raise ApiError(resp.status_code, problem)
        return resp

    def submit(self, request: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=request, headers=headers).json()

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def list(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/v1/jobs", params=filters).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}").json()

    def methods(self) -> builtins.list[dict[str, Any]]:
        return self._call("GET", "/v1/methods").json()["methods"]

    def models(self) -> builtins.list[dict[str, Any]]:
        return self._call("GET", "/v1/models").json()["models"]

    def register_model(self, path: str | Path, name: str) -> dict[str, Any]:
        """Upload a bundle directory's files (each named by its path inside the bundle)."""
        root = Path(path)
        files = [("files", (rel.as_posix(), p.read_bytes())) for p in sorted(root.rglob("*"))
                 if p.is_file() and not set((rel := p.relative_to(root)).parts) & SKIPPED_IN_BUNDLES]
        return self._call("POST", "/v1/models", data={"name": name}, files=files).json()

    def upload_corpus(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        with open(path, "rb") as f:
            return self._call("POST", "/v1/audits/uploads", files={"file": (path.name, f)}).json()

    def audit(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/audits", json=request).json()

    def get_audit(self, audit_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/audits/{audit_id}").json()

    def wait_audit(self, audit: dict[str, Any] | str, timeout: float = 3600.0, poll: float = 1.0,
                   on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        audit_id = audit if isinstance(audit, str) else audit["id"]
        deadline = time.monotonic() + timeout
        while True:
            doc = self.get_audit(audit_id)
            if on_update:
                on_update(doc)
            if doc["status"] in FINISHED:
                return doc
            if time.monotonic() > deadline:
                raise TimeoutError(f"audit {audit_id} still {doc['status']} after {timeout}s")
            time.sleep(poll)

    def download_url(self, url: str, dest: str | Path) -> Path:
        """Save an artifact given its API URL (as in a job or audit document)."""
        dest = Path(dest)
        with self._call("GET", url, stream=True) as resp, open(dest, "wb") as f:
            for chunk in resp.iter_content(1 << 16):
                f.write(chunk)
        return dest

    def wait(self, job: dict[str, Any] | str, timeout: float = 600.0, poll: float = 0.5,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job finishes (ETag-aware); on_update sees every new state."""
        job_id = job if isinstance(job, str) else job["id"]
        deadline, etag, doc = time.monotonic() + timeout, None, None
        while True:
            headers: dict[str, str] = {"If-None-Match": etag} if etag else {}
            resp = self._call("GET", f"/v1/jobs/{job_id}", headers=headers)
            if resp.status_code == 200:
                doc, etag = resp.json(), resp.headers.get("ETag")
                if on_update:
                    on_update(doc)
                if doc["status"] in FINISHED:
                    return doc
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {doc['status'] if doc else 'unknown'} after {timeout}s")
            time.sleep(poll)

    def download(self, job_id: str, name: str, dest: str | Path) -> Path:
        """Save one artifact (following a presigned-URL redirect) and return its path."""
        dest = Path(dest)
        return self.download_url(f"/v1/jobs/{job_id}/artifacts/{name}", dest / name if dest.is_dir() else dest)
