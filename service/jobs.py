"""Job lifecycle: the row is the truth. API side: submit, read, list, cancel. Worker side: claim, heartbeat,
progress, finish, fail. Housekeeping: the reaper. Every transition is one conditional UPDATE, so two workers or
a worker and the reaper can never both win."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Insert,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import (
    FINISHED,
    IN_FLIGHT_ROWS,
    Artifact,
    Database,
    Job,
    Lease,
    changed,
    full_row,
    is_id,
    newest_model_revision,
    tenant_row,
    utcnow,
)
from service.domain import JobStatus
from service.errors import Problem, conflict, not_found, too_many

# --- API side --------------------------------------------------------------------------------------------


def request_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def find_idempotent(session: Session, tenant_id: str, key: str | None, digest: str) -> Job | None:
    """The job an Idempotency-Key already made (replayed), or None; the same key with another body is 409."""
    if not key:
        return None
    found = session.execute(_keyed_job(), {"tenant_id": tenant_id, "key": key}).first()
    if found is None:  # the usual case (the light client sends a key with every submit): no ORM work
        return None
    if found.request_hash != digest:
        raise conflict("this Idempotency-Key was used with a different request body")
    return session.get(Job, found.id)


@cache
def _keyed_job() -> Select:
    """find_idempotent's query, built once with bound parameters (as _limits_statement, for the same reason)."""
    jobs = Job.__table__.c
    return select(jobs.id, jobs.request_hash) \
        .where(jobs.tenant_id == bindparam("tenant_id"), jobs.idempotency_key == bindparam("key")).limit(1)


@dataclass(frozen=True)
class Limits:
    """What the tenant limits are judged on, read in one round trip that reads a bounded amount whatever the
    table holds: the tenant's in-flight jobs counted (the limit keeps them few), and of the last minute's
    submissions (an audit's batch jobs are not) only the one that would be the limit's oldest (it exists: the limit
    is reached; the window frees a place when it leaves)."""

    in_flight: int
    limit_reached_at: datetime | None

    def check(self, settings: Settings) -> None:
        """429 over the tenant's in-flight or per-minute limit (a limit of 0 is none: never counted, never met)."""
        if settings.max_in_flight and self.in_flight >= settings.max_in_flight:
            raise too_many(f"{self.in_flight} jobs in flight; the limit is {settings.max_in_flight}",
                           settings.retry_after * 5)
        if self.limit_reached_at is not None:
            wait = 60 - (utcnow() - self.limit_reached_at).total_seconds()
            raise too_many(f"more than {settings.rate_per_minute} jobs a minute", int(wait) + 1)


def model_and_limits(session: Session, tenant_id: str, name: str, settings: Settings) -> tuple[Any | None, Limits]:
    """What a submit reads before its INSERT, in one round trip (was two): the newest registered revision of model
    `name` (a row for service.models.ref_of, None when the tenant registered none) and the tenant's Limits. The
    caller judges them in its own order: an unknown model (400) before the limits (429)."""
    statement = _model_and_limits(bool(settings.max_in_flight), bool(settings.rate_per_minute))
    row = session.execute(statement, {**_limits_params(tenant_id, settings), "name": name}).one()
    return (row if row.revision is not None else None), Limits(row.in_flight, row.limit_reached_at)


def _limits_params(tenant_id: str, settings: Settings) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "since": utcnow() - timedelta(minutes=1), "skip": settings.rate_per_minute - 1}


@cache
def _limits_statement(count_in_flight: bool = True, rate_window: bool = True) -> Select:
    """The tenant limits' query (Limits), built once per pair of limits that are on, with their values as
    parameters: building it per submit (and its cache key) cost more CPU than PostgreSQL spends running it. Each
    part reads few index entries whatever the table holds: the tenant's in-flight jobs (ix_jobs_tenant_in_flight:
    about as many as the limit lets in flight, more only after the limit was lowered or concurrent submits overshot
    it), the last minute's submissions (ix_jobs_own_created) up to the limit. A limit that is off (0) is not read
    at all: unbounded, counting would cost a submit as much as the tenant has queued (25-35 ms at 6,000 queued
    jobs, measured)."""
    jobs = Job.__table__.c
    mine = jobs.tenant_id == bindparam("tenant_id")
    # The in-flight index's own condition, as literal SQL (an audit's batch jobs are not the tenant's to limit): with
    # the states as bound parameters, the generic plan PostgreSQL may settle on for a statement psycopg has prepared
    # could not prove it, nor could SQLite, and neither would use the index. No LIMIT: with one, PostgreSQL expected
    # the tenant's in-flight rows everywhere (it takes tenant and status as independent) and scanned the whole table
    # for the first 20 of a tenant that had none.
    in_flight = select(func.count()).select_from(Job.__table__).where(mine, IN_FLIGHT_ROWS)
    # submissions, not an audit's batch jobs (an audit of 120 batches made every submit a 429 for a minute)
    limit_reached_at = select(jobs.created_at).where(mine, jobs.audit_id.is_(None),
                                                     jobs.created_at >= bindparam("since")) \
        .order_by(jobs.created_at.desc()).offset(bindparam("skip", type_=Integer)).limit(1)
    return select(
        (in_flight.scalar_subquery() if count_in_flight else literal(0, Integer)).label("in_flight"),
        (limit_reached_at.scalar_subquery() if rate_window
         else null().cast(Job.__table__.c.created_at.type)).label("limit_reached_at"))


@cache
def _model_and_limits(count_in_flight: bool = True, rate_window: bool = True) -> Select:
    """The limits' one row, outer-joined to the model's newest revision (at most one row, no lateral reference:
    SQLite runs it too); the shared "tenant_id" parameter feeds both."""
    limits = _limits_statement(count_in_flight, rate_window).subquery("limits")
    model = newest_model_revision().subquery("model")
    return select(model.c.name, model.c.revision, model.c.storage_key, limits.c.in_flight,
                  limits.c.limit_reached_at).select_from(limits.outerjoin(model, true()))


def create(session: Session, tenant_id: str, request: dict[str, Any], revision: str, queue: str,
           idempotency_key: str | None, digest: str, enqueued_at: datetime | None = None) -> Job:
    """A queued job row, as inserted (not attached to the session). `digest` is the hash of the body as sent, for
    Idempotency-Key replays; `enqueued_at` is stamped in the same INSERT by a caller that sends the message after
    the commit. One Core INSERT: the ORM's flush of one new object cost ~0.4 ms of a submit's CPU."""
    values = full_row(Job, tenant_id=tenant_id, model_name=request["model"], model_revision=revision,
                      request=request, request_hash=digest, idempotency_key=idempotency_key, queue=queue,
                      enqueued_at=enqueued_at)
    try:
        # None is left out, not sent: a JSON column would store the JSON text 'null' for it, where an unset
        # column (as the ORM wrote it) is SQL NULL
        session.execute(_insert_job(), {k: v for k, v in values.items() if v is not None})
    except IntegrityError as e:  # a concurrent request with the same Idempotency-Key won the race
        raise conflict("a request with this Idempotency-Key is being processed; retry to replay it", 1) from e
    return Job(**values)


@cache
def _insert_job() -> Insert:
    return insert(cast(Table, Job.__table__))


def mark_enqueued(db: Database, job_id: str) -> None:
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def mark_unsent(db: Database, job_id: str) -> None:
    """The message could not be sent (the broker is down): the reaper sends it on its next pass."""
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(enqueued_at=None))


def get(session: Session, tenant_id: str, job_id: str) -> Job:
    return tenant_row(session, Job, tenant_id, job_id, "job")


def etag(session: Session, tenant_id: str, job_id: str) -> str:
    """A version tag from the row's bookkeeping columns: every transition and progress write moves updated_at."""
    row = session.execute(select(Job.tenant_id, Job.updated_at, Job.status, Job.progress, Job.attempts,
                                 Job.cancel_requested).where(Job.id == job_id)).first() if is_id(job_id) else None
    if row is None or row.tenant_id != tenant_id:
        raise not_found(f"job {job_id}")
    return hashlib.sha256(repr(tuple(row)).encode()).hexdigest()[:32]


def listing(session: Session, tenant_id: str, limit: int, cursor: str | None, status: str | None,
            model: str | None) -> tuple[list[Job], str | None]:
    """Newest first; the cursor is the (created_at, id) of the last item seen."""
    return page(session, listing_statement(tenant_id, status, model), Job, limit, cursor)


def listing_statement(tenant_id: str, status: str | None, model: str | None) -> Select:
    """The tenant's own jobs (with a status: ix_jobs_own_status), before page() orders them."""
    q = select(Job).where(Job.tenant_id == tenant_id, Job.audit_id.is_(None))
    if status:
        q = q.where(Job.status == status)
    if model:
        q = q.where(Job.model_name == model)
    return q


def page(session: Session, q: Any, row: Any, limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of rows (jobs or audits), newest first; the cursor is the (created_at, id) of the last item seen."""
    rows = list(session.scalars(page_statement(q, row, limit, cursor)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_encode_cursor(rows[-1]) if more else None)


def page_statement(q: Any, row: Any, limit: int, cursor: str | None) -> Any:
    """`page`'s query: one more row than the page, to know whether another follows."""
    if cursor:
        at, last_id = _decode_cursor(cursor)
        q = q.where(or_(row.created_at < at, and_(row.created_at == at, row.id < last_id)))
    return q.order_by(row.created_at.desc(), row.id.desc()).limit(limit + 1)


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """queued -> cancelled at once; running -> flagged (the worker stops at its next step); finished -> 409."""
    job = get(session, tenant_id, job_id)
    now = utcnow()
    done = changed(session, update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED).values(
        status=JobStatus.CANCELLED, finished_at=now, cancel_requested=True))
    if not done:
        session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING).values(cancel_requested=True))
    session.refresh(job)
    if job.status in FINISHED and not (job.status == JobStatus.CANCELLED and done):
        raise conflict(f"job {job.id} already {job.status}")
    return job


def document(job: Job, artifacts: list[Artifact], with_result: bool = True) -> dict[str, Any]:
    """The job document of docs/api.md."""
    doc: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "progress": round(job.progress, 4),
        "attempts": job.attempts,
        "attempt_history": job.attempt_history or [],
        "cancel_requested": job.cancel_requested,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "timings": _timings(job),
        "device": job.device,
        "error": job.error,
        "model": {"name": job.model_name, "revision": job.model_revision},
        "request": job.request,
        "artifacts": [{"name": a.name, "content_type": a.content_type, "bytes": a.bytes, "sha256": a.sha256,
                       "url": f"/v1/jobs/{job.id}/artifacts/{a.name}"} for a in artifacts],
    }
    if with_result:
        result = job.result or {}
        doc["result"] = result.get("result")
        if "compare" in result:
            doc["compare"] = result["compare"]
            doc["model_agreement"] = result.get("model_agreement")  # word-score agreement between the models
    return doc


def artifacts_of(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


# --- worker side -----------------------------------------------------------------------------------------


@dataclass
class Claim:
    job: Job
    attempt: int


def claim(db: Database, job_id: str, worker: str, settings: Settings, device: str) -> Claim | None:
    """Take a queued job (or one whose lease expired) for this worker; None if someone else has it or it ended.

    A job whose attempts are spent is dead-lettered to `failed` instead, but only once no worker holds a live
    lease on it: a duplicate delivery of a running job's message must not fail the attempt that is running."""
    now = utcnow()
    claimable = or_(Job.status == JobStatus.QUEUED, and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now))
    with db.session() as s:
        # the usual case, one statement: the row taken and read back (was a read, the update, and a re-read)
        job = s.scalars(update(Job).where(Job.id == job_id, claimable, Job.cancel_requested.is_(False),
                                          Job.attempts < settings.max_attempts).values(
            status=JobStatus.RUNNING, attempts=Job.attempts + 1, lease_owner=worker, device=device,
            lease_expires_at=now + timedelta(seconds=settings.lease_seconds), progress=0.0,
            started_at=now).returning(Job)).one_or_none()
        if job is None:
            _dead_letter_if_spent(s, job_id, claimable, settings, now)
            return None
        history = _closed(job.attempt_history, "lease expired", now)  # the attempt before, if its worker died
        job.attempt_history = [*history, {"attempt": job.attempts, "worker": worker, "device": device,
                                          "started_at": now.isoformat(), "ended_at": None, "outcome": None}]
        return Claim(job, job.attempts)


def _dead_letter_if_spent(s: Session, job_id: str, claimable: Any, settings: Settings, now: datetime) -> None:
    """A claimable job whose attempts are spent fails, dead-lettered (claim's docstring)."""
    attempts = s.scalar(select(Job.attempts).where(Job.id == job_id))
    if attempts is None or attempts < settings.max_attempts:
        return
    spent = changed(s, update(Job).where(Job.id == job_id, claimable, Job.attempts >= settings.max_attempts)
                      .values(status=JobStatus.FAILED, finished_at=now, lease_owner=None, lease_expires_at=None,
                              error=dead_letter(attempts)))
    if spent:
        _close_attempt(s, job_id, "lease expired", now)


def _closed(history: list[dict[str, Any]] | None, outcome: str, at: datetime) -> list[dict[str, Any]]:
    """The history with its open attempt (if any) ended now with that outcome."""
    history = [dict(h) for h in history or []]
    if history and history[-1].get("ended_at") is None:
        history[-1].update(ended_at=at.isoformat(), outcome=outcome)
    return history


def _close_attempt(session: Session, job_id: str, outcome: str, at: datetime,
                   history: list[dict[str, Any]] | None = None) -> None:
    """End the open attempt in the row's history (read here unless given); call in the transaction that made the
    transition."""
    if history is None:
        history = session.scalar(select(Job.attempt_history).where(Job.id == job_id))
    session.execute(update(Job).where(Job.id == job_id).values(attempt_history=_closed(history, outcome, at)))


def heartbeat(db: Database, job_id: str, worker: str, settings: Settings, progress: float | None = None) -> bool:
    """Extend the lease (and write progress). Returns False when this worker no longer owns the job."""
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=settings.lease_seconds)}
    if progress is not None:
        values["progress"] = progress
    with db.session() as s:
        owned = changed(s, update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                                            Job.lease_owner == worker).values(**values))
        return bool(owned)


def cancel_requested(db: Database, job_id: str) -> bool:
    with db.session() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish(db: Database, job_id: str, worker: str, status: str, *, result: dict | None = None,
           error: dict | None = None, artifacts: Sequence[Artifact] = ()) -> bool:
    """Record the outcome, fenced by the lease: a worker that lost its job cannot overwrite it."""
    with db.session() as s:
        # the history comes back with the fenced update (was a read of its own)
        won = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == worker)
                        .values(status=status, result=result, error=error, finished_at=utcnow(),
                                progress=1.0 if status == JobStatus.SUCCEEDED else Job.progress,
                                lease_owner=None, lease_expires_at=None).returning(Job.attempt_history)).first()
        if won:
            _close_attempt(s, job_id, status, utcnow(), won.attempt_history)
            for old in s.scalars(select(Artifact).where(Artifact.job_id == job_id)):
                s.delete(old)
            s.flush()
            for a in artifacts:
                s.add(a)
        return bool(won)


def dead_letter(attempts: int) -> dict[str, Any]:
    return Problem(500, "Job dead-lettered", f"the job was delivered {attempts} times without finishing "
                   "(its worker died or timed out each time); it will not be retried").body()


# --- housekeeping ----------------------------------------------------------------------------------------


def lead(db: Database, name: str, owner: str, seconds: float) -> bool:
    """Take or renew the named lease for `owner`; False while another owner holds it unexpired. Workers on many
    machines each run a reaper thread; this makes one of them do the work at a time."""
    now = utcnow()
    until = now + timedelta(seconds=seconds)
    with db.session() as s:
        if changed(s, update(Lease).where(Lease.name == name, or_(Lease.owner == owner, Lease.expires_at < now))
                     .values(owner=owner, expires_at=until)):
            return True
        if s.get(Lease, name) is not None:
            return False
    try:
        with db.session() as s:
            s.add(Lease(name=name, owner=owner, expires_at=until))
        return True
    except IntegrityError:  # another owner inserted it first
        return False


def reap(db: Database, settings: Settings, send: Callable[[str, str], None],
         held: Callable[[], set[str] | None] | None = None) -> dict[str, int]:
    """Re-queue jobs whose lease expired, dead-letter those out of attempts, and send the queued jobs whose message
    is gone. (The reaper thread also starts the finaliser of audits whose batches have all ended:
    service.audits.release_finalizers.)

    `held` says which job ids the broker still holds (service.queue.held_job_ids): a job queued long but still
    waiting in the broker is not lost, and re-sending it would only grow the queue (and what scales on it)."""
    now = utcnow()
    counts = {"requeued": 0, "dead": 0, "resent": 0}
    stale = now - timedelta(seconds=settings.requeue_after)
    _expire_leases(db, settings, now, counts)
    with db.session() as s:
        # enqueued_at is None: known unsent, so sent whatever the broker says (re-queued just above, its message
        # went with the dead worker though the broker may list it as delivered; or the API's send failed). The API
        # stamps it before it commits, so a send in progress never looks unsent.
        waiting = s.execute(select(Job.id, Job.queue, Job.enqueued_at.is_(None)).where(
            Job.status == JobStatus.QUEUED, or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale))).all()
    in_broker = held() if held is not None and waiting else None
    for job_id, queue, unsent in waiting:
        if unsent or in_broker is None or job_id not in in_broker:
            send(job_id, queue)
            counts["resent"] += 1
        mark_enqueued(db, job_id)
    return counts


def _expire_leases(db: Database, settings: Settings, now: datetime, counts: dict[str, int]) -> None:
    """End the attempts whose lease ran out: dead-letter, cancel or re-queue (enqueued_at None: to be sent)."""
    with db.session() as s:
        expired = s.scalars(select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)).all()
        for job in expired:
            lost = and_(Job.id == job.id, Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
            if job.attempts >= settings.max_attempts:
                done = changed(s, update(Job).where(lost).values(
                    status=JobStatus.FAILED, finished_at=now, lease_owner=None, lease_expires_at=None,
                    error=dead_letter(job.attempts)))
                counts["dead"] += done
            elif job.cancel_requested:
                done = changed(s, update(Job).where(lost).values(status=JobStatus.CANCELLED, finished_at=now,
                                                                lease_owner=None, lease_expires_at=None))
            else:
                done = changed(s, update(Job).where(lost).values(
                    status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None, enqueued_at=None))
                counts["requeued"] += done
            if done:
                _close_attempt(s, job.id, "lease expired", now)


# --- helpers ---------------------------------------------------------------------------------------------


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _timings(job: Job) -> dict[str, float | None]:
    def seconds(a: datetime | None, b: datetime | None) -> float | None:
        return round((b - a).total_seconds(), 3) if a and b else None

    return {"queued_seconds": seconds(job.created_at, job.started_at),
            "run_seconds": seconds(job.started_at, job.finished_at),
            "total_seconds": seconds(job.created_at, job.finished_at)}


def _encode_cursor(row: Any) -> str:
    import base64

    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    import base64

    try:
        at, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), job_id
    except Exception as e:
        raise Problem(400, "Bad cursor", "the cursor is not one this API returned") from e
