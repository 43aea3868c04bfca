"""A small Python client for the Lantern API: submit, get, wait, download; typed job and audit documents.

    from service.client import Client
    c = Client("http://127.0.0.1:8000", "lt_...")
    job = c.wait(c.submit({"model": "minilm-rt", "inputs": {"text": "A fine film."}, "methods": ["gradient"]}))
    job.status, job.result["prediction"], job.to_pandas(); job      # in a notebook: the job's result.html

Light on purpose (`pip install lantern` brings requests and click only): nothing here imports the server or the
engine (import-linter contract 4).
"""
from __future__ import annotations

import builtins
import html
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError
from urllib3.util.retry import Retry

from service.domain import FINISHED

# entries that carry no model content (the server's worker.models.bundle._IGNORED); every other file, dot-files
# included, is part of the model and of its revision
SKIPPED_IN_BUNDLES = frozenset({".git", "__pycache__", ".gitattributes", ".DS_Store", ".complete"})
DEFAULT_POLL = 1.0  # seconds between polls when the server sends no Retry-After
# the request option `faithfulness` (docs/api.md): how much faithfulness work each token-scoring method gets
Faithfulness = Literal["full", "basic", "none"]
FAITHFULNESS_LEVELS: tuple[Faithfulness, ...] = ("full", "basic", "none")


class ApiError(Exception):
    """An answer of 400 or more; `problem` is its application/problem+json body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        detail = problem.get("detail") or problem.get("title") or ""
        super().__init__(f"{status} {problem.get('title', '')}: {detail}".strip())

    @property
    def field_errors(self) -> builtins.list[str]:
        """Validation errors as `field: message` lines (`errors` flattened, nested fields joined with dots)."""
        return [f"{name}: {message}" for name, message in _flatten(self.problem.get("errors") or {})]


def _flatten(errors: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(errors, builtins.list) and all(isinstance(e, str) for e in errors):
        yield prefix, " ".join(errors)
    else:
        yield prefix, str(errors)


# --- typed documents ------------------------------------------------------------------------------------------

D = TypeVar("D", bound="Document")


@dataclass(frozen=True, eq=False)
class Document(Mapping[str, Any]):
    """An API document: typed attributes, the dict as `.raw`, and read-only dict access (`job["status"]`) as the
    client gave before it had types."""

    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_raw(cls: type[D], raw: dict[str, Any], **extra: Any) -> D:
        names = {f.name for f in fields(cls) if f.init} - {"raw"} - set(extra)
        values = {name: raw.get(name) for name in names}
        if "artifacts" in values:
            values["artifacts"] = [Artifact.from_raw(a) for a in raw.get("artifacts") or []]
        return cls(raw=raw, **values, **extra)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def finished(self) -> bool:
        return self.raw.get("status") in FINISHED


@dataclass(frozen=True)
class Artifact:
    name: str
    content_type: str
    bytes: int
    sha256: str
    url: str

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Artifact:
        known: dict[str, Any] = {f.name: raw.get(f.name) for f in fields(cls)}
        return cls(**known)  # fields the server adds later are ignored here (they stay in the job's .raw)


@dataclass(frozen=True, eq=False)
class Job(Document):
    """The job document (docs/api.md); `result` is the result document, or a batch's `{"kind": "batch", "items"}`."""

    id: str = ""
    status: str = ""
    progress: float = 0.0
    attempts: int = 0
    model: dict[str, Any] | None = None
    request: dict[str, Any] | None = field(default=None, repr=False)
    device: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    timings: dict[str, Any] | None = None
    cancel_requested: bool | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)
    compare: dict[str, Any] | None = field(default=None, repr=False)
    artifacts: builtins.list[Artifact] = field(default_factory=builtins.list)
    client: Client | None = field(default=None, repr=False)  # for the notebook view and save_html

    def artifact(self, name: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.name == name), None)

    def save_html(self, path: str | Path) -> Path:
        """Save the job's result.html (the self-contained viewer page) to path (a file, or a folder)."""
        return self._needs_client().download(self, "result.html", path)

    def html(self) -> str | None:
        """The job's result.html, or None while it has none."""
        if self.artifact("result.html") is None:
            return None
        return self._needs_client()._call("GET", f"/v1/jobs/{self.id}/artifacts/result.html").text

    def _repr_html_(self) -> str:
        page = self.html()
        if page is None:
            why = f"is {self.status}" if not self.finished else f"ended {self.status} without one"
            return (f"<p>Lantern job <code>{html.escape(self.id)}</code> has no result.html yet: it "
                    f"{html.escape(why)}. Call <code>client.wait(job)</code> and show the job it returns.</p>")
        return (f'<iframe srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" '
                'style="width: 100%; height: 640px; border: 1px solid #ddd"></iframe>')

    def to_pandas(self, level: str = "words") -> Any:
        """A pandas DataFrame of the scores: one row per word (`level="words"`, columns `word` then one per
        token-scoring method) or per token (`level="tokens"`: `token`, `special`, methods); a batch adds `item`."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Job.to_pandas needs pandas: pip install pandas") from None
        if level not in ("words", "tokens"):
            raise ValueError("level is 'words' or 'tokens'")
        if not self.result:
            raise ValueError(f"job {self.id} has no result (it is {self.status})")
        batch = self.result.get("kind") == "batch"
        items = self.result["items"] if batch else [self.result]
        frames = [_score_frame(pd, item, level).assign(**({"item": i} if batch else {}))
                  for i, item in enumerate(items)]
        frame = pd.concat(frames, ignore_index=True)
        return frame[["item", *[c for c in frame.columns if c != "item"]]] if batch else frame

    def _needs_client(self) -> Client:
        if self.client is None:
            raise RuntimeError("this Job was made without a client; get it with Client.get to download files")
        return self.client


def _score_frame(pd: Any, result: dict[str, Any], level: str) -> Any:
    key, labels = ("word_scores", "word") if level == "words" else ("scores", "token")
    rows = result["word_strings"] if level == "words" else result["tokens"]
    columns: dict[str, Any] = {labels: rows}
    if level == "tokens":
        columns["special"] = result["special"]
    for method, part in result["methods"].items():
        scores = part.get(key)
        if isinstance(scores, builtins.list) and len(scores) == len(rows):  # token-scoring methods only
            columns[method] = scores
    return pd.DataFrame(columns)


@dataclass(frozen=True, eq=False)
class Audit(Document):
    """The audit document (docs/api.md)."""

    id: str = ""
    status: str = ""
    progress: float = 0.0
    counts: dict[str, int] | None = None
    items_per_second: float | None = None
    eta_seconds: float | None = None
    models: builtins.list[str] | None = None
    methods: builtins.list[str] | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    request: dict[str, Any] | None = field(default=None, repr=False)
    aggregates: dict[str, Any] | None = field(default=None, repr=False)
    error: dict[str, Any] | None = None
    artifacts: builtins.list[Artifact] = field(default_factory=builtins.list)


# --- the client ----------------------------------------------------------------------------------------------


def retrying_session(retries: int, backoff: float) -> requests.Session:
    """429 and 503 are retried after their Retry-After (else with exponential backoff), for every method: the
    server refused before doing anything. Connection failures are retried too; a request that was sent and then
    lost (a read error) is not here, since it may have been carried out: `Client._call` sends it once more only
    where that is safe (idempotent methods, POSTs with an Idempotency-Key)."""
    retry = Retry(total=retries, connect=retries, read=0, status=retries, other=0, backoff_factor=backoff,
                  status_forcelist=(429, 503), allowed_methods=None, respect_retry_after_header=True,
                  raise_on_status=False)
    session = requests.Session()
    for scheme in ("http://", "https://"):
        session.mount(scheme, HTTPAdapter(max_retries=retry))
    return session


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.25) -> None:
        self.url = (url or os.environ.get("LANTERN_URL", "http://127.0.0.1:8000")).rstrip("/")
        self.session = retrying_session(retries, backoff)
        key = key or os.environ.get("LANTERN_API_KEY")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            resp = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kw)
        except requests.ConnectionError as e:
            if not (_dropped(e) and _replayable(method, kw.get("headers"))):
                raise
            # once: the server closed a kept-alive connection as the request went out on it (its keep-alive
            # timeout), so the request was lost unanswered; sent again on a new connection
            resp = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kw)
            if resp.status_code == 409 and "Retry-After" in resp.headers:
                # the lost copy did arrive and is still being committed: its replay is a moment away
                time.sleep(min(float(resp.headers["Retry-After"]), 5.0))
                resp = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kw)
        if resp.status_code >= 400:
            try:
                problem = resp.json()
            except ValueError:
                problem = {"title": resp.reason, "detail": resp.text[:200]}
            raise ApiError(resp.status_code, problem if isinstance(problem, dict) else {"detail": str(problem)})
        return resp

    def _job(self, resp: requests.Response) -> Job:
        return Job.from_raw(resp.json(), client=self)

    # --- jobs
    def submit(self, request: dict[str, Any], idempotency_key: str | None = None, *,
               faithfulness: Faithfulness | None = None) -> Job:
        """Queue a job; `faithfulness` sets the request's option (None: as `request` says, else the server's
        default, "full"). Without an `idempotency_key` the client makes one up, so that a submit lost to a dropped
        connection can be sent again without making a second job."""
        headers = {"Idempotency-Key": idempotency_key or f"lantern-client-{uuid.uuid4().hex}"}
        return self._job(self._call("POST", "/v1/jobs", json=_with_level(request, faithfulness), headers=headers))

    def get(self, job_id: str | Job) -> Job:
        return self._job(self._call("GET", f"/v1/jobs/{_id(job_id)}"))

    def list(self, **filters: Any) -> dict[str, Any]:
        """One page, as the API answers it (`items`, `next_cursor`); `jobs()` walks every page."""
        return self._call("GET", "/v1/jobs", params=filters).json()

    def jobs(self, **filters: Any) -> Iterator[Job]:
        """Every job of the caller, newest first, page by page (filters: status, model, limit = page size)."""
        for raw in self._pages("/v1/jobs", filters):
            yield Job.from_raw(raw, client=self)

    def cancel(self, job_id: str | Job) -> Job:
        return self._job(self._call("DELETE", f"/v1/jobs/{_id(job_id)}"))

    def wait(self, job: Job | dict[str, Any] | str, timeout: float = 600.0, poll: float | None = None,
             on_update: Callable[[Job], None] | None = None) -> Job:
        """Poll until the job finishes and return it; on_update sees every new state. Polls send the last ETag
        (a 304 costs the server nothing) and wait what the server's Retry-After asks, unless `poll` is given."""
        doc = self._wait(f"/v1/jobs/{_id(job)}", timeout, poll, on_update, lambda r: Job.from_raw(r, client=self))
        assert isinstance(doc, Job)
        return doc

    def download(self, job: str | Job, name: str, dest: str | Path) -> Path:
        """Save one artifact of a job (following a presigned-URL redirect) into dest (a folder or a file path)."""
        return self.download_url(f"/v1/jobs/{_id(job)}/artifacts/{name}", _target(dest, name))

    # --- audits
    def upload_corpus(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        with open(path, "rb") as f:
            return self._call("POST", "/v1/audits/uploads", files={"file": (path.name, f)}).json()

    def audit(self, request: dict[str, Any], *, faithfulness: Faithfulness | None = None) -> Audit:
        """Start an audit; `faithfulness` as for `submit`."""
        return Audit.from_raw(self._call("POST", "/v1/audits", json=_with_level(request, faithfulness)).json())

    def get_audit(self, audit_id: str | Audit) -> Audit:
        return Audit.from_raw(self._call("GET", f"/v1/audits/{_id(audit_id)}").json())

    def audits(self, **filters: Any) -> Iterator[Audit]:
        """Every audit of the caller, newest first, page by page (filters: status, limit = page size)."""
        for raw in self._pages("/v1/audits", filters):
            yield Audit.from_raw(raw)

    def cancel_audit(self, audit_id: str | Audit) -> Audit:
        return Audit.from_raw(self._call("DELETE", f"/v1/audits/{_id(audit_id)}").json())

    def wait_audit(self, audit: Audit | dict[str, Any] | str, timeout: float = 3600.0, poll: float | None = None,
                   on_update: Callable[[Audit], None] | None = None) -> Audit:
        doc = self._wait(f"/v1/audits/{_id(audit)}", timeout, poll, on_update, Audit.from_raw)
        assert isinstance(doc, Audit)
        return doc

    def download_audit(self, audit: str | Audit, name: str, dest: str | Path) -> Path:
        return self.download_url(f"/v1/audits/{_id(audit)}/artifacts/{name}", _target(dest, name))

    # --- models and methods
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

    # --- plumbing
    def download_url(self, url: str, dest: str | Path) -> Path:
        """Save an artifact given its API URL (as in a job or audit document)."""
        dest = Path(dest)
        with self._call("GET", url, stream=True) as resp, open(dest, "wb") as f:
            for chunk in resp.iter_content(1 << 16):
                f.write(chunk)
        return dest

    def _pages(self, path: str, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        while True:
            page = self._call("GET", path, params=params).json()
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def _wait(self, path: str, timeout: float, poll: float | None, on_update: Callable[[Any], None] | None,
              make: Callable[[dict[str, Any]], Document]) -> Document:
        deadline, etag, doc, pause = time.monotonic() + timeout, None, None, poll or DEFAULT_POLL
        while True:
            resp = self._call("GET", path, headers={"If-None-Match": etag} if etag else {})
            if resp.status_code == 200:
                doc, etag = make(resp.json()), resp.headers.get("ETag")
                if on_update:
                    on_update(doc)
                if doc.finished:
                    return doc
            if poll is None:
                pause = _seconds(resp.headers.get("Retry-After"), pause)
            if time.monotonic() + pause > deadline:
                status = doc["status"] if doc else "unknown"
                raise TimeoutError(f"{path.rsplit('/', 1)[-1]} still {status} after {timeout}s")
            time.sleep(pause)


REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS"})  # safe methods; anything else only with an Idempotency-Key


def _replayable(method: str, headers: Mapping[str, str] | None) -> bool:
    return method.upper() in REPLAYABLE or any(k.lower() == "idempotency-key" for k in headers or {})


def _dropped(error: requests.ConnectionError) -> bool:
    """The connection broke after the request was sent (the server closed it, or reset it) and before any answer.
    A connection refused or timed out is not this: the adapter's Retry already retried those."""
    cause = error.args[0] if error.args else None
    cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError carries the failure as its reason
    return isinstance(cause, (ProtocolError, ConnectionResetError, BrokenPipeError))


def _with_level(request: dict[str, Any], faithfulness: Faithfulness | None) -> dict[str, Any]:
    return request if faithfulness is None else {**request, "faithfulness": faithfulness}


def _id(thing: str | Mapping[str, Any]) -> str:
    return thing if isinstance(thing, str) else thing["id"]


def _target(dest: str | Path, name: str) -> Path:
    dest = Path(dest)
    return dest / name if dest.is_dir() else dest


def _seconds(header: str | None, default: float) -> float:
    """Retry-After in seconds (the server sends delta-seconds; anything else keeps the previous pause)."""
    try:
        return max(0.0, float(header)) if header is not None else default
    except ValueError:
        return default
