"""Tables (SQLAlchemy 2.0) and the engine/session factory. The job row is the source of truth (docs/architecture.md)."""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar, cast

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import CursorResult, Engine, make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeDecorator

from service.domain import FINISHED, IN_FLIGHT, JOB_STATES, JobKind, JobStatus  # noqa: F401 (re-exported)

WAITING = JobStatus.WAITING


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def is_id(value: str) -> bool:
    """Whether a path segment can be one of our ids (a canonical UUID), so lookups of anything else are 404s
    without a query that PostgreSQL would refuse to compare with a uuid-shaped column."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public key id, part of the key
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the whole key
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Model(Base):
    """A registered model bundle. Zoo models are not rows: they come with the code and are visible to all."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "revision"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    revision: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))  # where the bundle's files live in object storage
    card: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # describe(): labels, layers, methods
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


@cache
def newest_model_revision() -> Select:
    """The row (name, revision, storage_key) of the newest revision of model "name" that tenant "tenant_id"
    registered, built once with bound parameters on the table's columns: the ORM query built per submit (its cache
    key, its entity loading) cost more of a submit's CPU than PostgreSQL spends on it. Here beside its table so
    that the job lifecycle (service/jobs.py, which reads it with the tenant limits) need not import service.models
    and, through it, the engine."""
    models = Model.__table__.c
    return select(models.name, models.revision, models.storage_key) \
        .where(models.tenant_id == bindparam("tenant_id"), models.name == bindparam("name")) \
        .order_by(models.created_at.desc()).limit(1)


class Lease(Base):
    """A named lease on a piece of housekeeping that one process at a time should do (the reaper)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


# A tenant's own jobs, not an audit's batches: what the API reads per tenant (listings, the tenant limits). A partial
# index's condition is SQL text (the columns do not exist yet here); a query proves it with its own audit_id IS NULL.
OWN_JOBS = text("audit_id IS NULL")
# ... and of those, the ones in flight (queued or running)
IN_FLIGHT_ROWS = text("status IN (" + ", ".join(f"'{status.value}'" for status in IN_FLIGHT) + ")"
                      " AND audit_id IS NULL")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # The tenant's own jobs in flight, what every submit counts for its limit (service.jobs.Limits, which
        # filters with this very condition, so that any plan can prove it): the tenant's few entries, not its history
        # nor the other tenants' backlog (without it PostgreSQL read every queued job of every tenant, or the table)
        Index("ix_jobs_tenant_in_flight", "tenant_id", "created_at", postgresql_where=IN_FLIGHT_ROWS,
              sqlite_where=IN_FLIGHT_ROWS),
        # The tenant's own jobs of one status, newest first: GET /v1/jobs?status=… reads its page and stops (it read
        # the tenant's whole history newest first until it had found a page of a rare status)
        Index("ix_jobs_own_status", "tenant_id", "status", "created_at", "id", postgresql_where=OWN_JOBS,
              sqlite_where=OWN_JOBS),
        # The tenant's own submissions newest first: the per-minute limit reads the last minute's up to the limit
        # without stepping over an audit's batch jobs (an audit makes up to 40,000 at once; ix_jobs_tenant_created
        # holds them, and stays for everything else keyed by tenant)
        Index("ix_jobs_own_created", "tenant_id", "created_at", postgresql_where=OWN_JOBS, sqlite_where=OWN_JOBS),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    audit_id: Mapped[str | None] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20), default=JobKind.EXPLAIN)  # explain | audit_batch | audit_finalize
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    model_name: Mapped[str] = mapped_column(String(100))
    model_revision: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # one entry per attempt: worker, device, started_at, ended_at, outcome (jobs.claim opens it, the end closes it)
    attempt_history: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=list)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    device: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Audit(Base):
    """A corpus audit (audit issue): the parent row; child work is tracked in `audit_items`."""

    __tablename__ = "audits"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    total: Mapped[int] = mapped_column(Integer, default=0)  # items × models
    done: Mapped[int] = mapped_column(Integer, default=0)  # items finished, counted as they are written
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # bumped by every write to the row (service/audit_lifecycle.py): the audit document's ETag
    version: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # the aggregates so far (folded per finished batch), the final ones once the finaliser has run
    aggregates: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # the running sums the aggregates so far are derived from; large, so loaded only when asked for
    aggregate_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class AuditItem(Base):
    """One corpus item through one model; written only by the lease holder of its batch job."""

    __tablename__ = "audit_items"
    __table_args__ = (UniqueConstraint("audit_id", "model", "position"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(100), default="")
    position: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer, index=True)
    label: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Upload(Base):
    """A corpus file uploaded for audits (validated and parsed on upload; items stored as JSON lines)."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(500))
    items: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"), UniqueConstraint("audit_id", "name"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    audit_id: Mapped[str | None] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


Owned = TypeVar("Owned", "Job", "Audit", "Upload")


def tenant_row(session: Session, table: type[Owned], tenant_id: str, row_id: str, what: str) -> Owned:
    """The tenant's row with this id; 404 for anything else (another tenant's row included: ids are not secrets,
    but another tenant's are not found)."""
    from service.errors import not_found

    row = session.get(table, row_id) if is_id(row_id) else None
    if row is None or row.tenant_id != tenant_id:
        raise not_found(f"{what} {row_id}")
    return row


def named_artifact(session: Session, owner: Job | Audit, name: str) -> Artifact:
    """The artifact `name` of a job or an audit (already checked to be the caller's); 404 when it has none."""
    from service.errors import not_found

    of_owner = Artifact.job_id == owner.id if isinstance(owner, Job) else Artifact.audit_id == owner.id
    row = session.scalars(select(Artifact).where(of_owner, Artifact.name == name)).first()
    if row is None:
        raise not_found(f"artifact {name!r} of {'job' if isinstance(owner, Job) else 'audit'} {owner.id}")
    return row


def full_row(table: type[Base], **given: Any) -> dict[str, Any]:
    """Every column of a new row of `table`: the given values, each other column's Python default (a callable
    one called now: ids, timestamps, empty lists), None for the rest. For a Core INSERT whose row is wanted back
    without reading it (`table(**row)`), as the ORM would have filled it."""
    row = {}
    for column in table.__table__.columns:
        if column.key in given:
            row[column.key] = given[column.key]
        elif column.server_default is not None:  # the database's value would differ from the row handed back
            raise TypeError(f"full_row: {table.__name__}.{column.key} has a server default")
        elif column.default is not None and column.default.is_scalar:
            row[column.key] = column.default.arg
        elif column.default is not None and column.default.is_callable:
            row[column.key] = column.default.arg(None)
        else:
            row[column.key] = None
    return row


def changed(session: Session, statement: Executable) -> int:
    """How many rows an UPDATE or DELETE changed: the outcome of a conditional transition (0: another won)."""
    return cast(CursorResult, session.execute(statement)).rowcount


def is_unavailable(error: BaseException) -> bool:
    """The database could not be reached (down, restarting, connection cut): try again later. Not the request's
    fault, so the API answers 503 and a worker puts its message back instead of failing the job."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


# --- engine and sessions ---------------------------------------------------------------------------------


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # Connecting to a server that does not answer (a host gone from the network, a full backlog, one that took the
    # connection and says nothing) otherwise waits ~130 s (psycopg's default): a request would hang where it should
    # get its 503 with Retry-After. A connect_timeout in the URL, or PGCONNECT_TIMEOUT, still wins. (Only the
    # connection: a query on a pooled connection whose host vanished waits for TCP.)
    chosen = "connect_timeout" in make_url(url).query or bool(os.environ.get("PGCONNECT_TIMEOUT"))
    timeout = {} if chosen else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    engine = create_engine(url, pool_size=5, max_overflow=5, connect_args=timeout)
    ping_when_idle(engine)
    return engine


CONNECT_TIMEOUT_SECONDS = 5


# A pooled connection idle longer than this is pinged before it is handed out. pool_pre_ping pinged on every
# checkout: one more round trip to PostgreSQL per unit of work (~19 % of a submit's time at 200 req/s on 2 cores).
# A connection in steady use is not pinged; one that died within the interval fails its first statement, which the
# API answers 503 + Retry-After (service/db.is_unavailable), and that disconnect error invalidates the whole pool.
POOL_PING_IDLE_SECONDS = 2.0
_CHECKED_IN = "lantern_checked_in_at"  # in the connection record's info, which a reconnect clears


def ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping, only for connections idle longer than POOL_PING_IDLE_SECONDS (read at each checkout, so a
    test can move it). A failed ping does what pre-ping's does: the pool replaces the connection (and every one
    pooled before now: a server that dropped one has likely dropped all, a restart say) and retries the checkout."""

    def checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    def checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN)
        if since is None or time.monotonic() - since < POOL_PING_IDLE_SECONDS:
            return  # just connected, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as e:
            raise InvalidatePoolError(f"a connection idle {time.monotonic() - since:.0f} s is gone") from e

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checked_out)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# set on an autocommit session's connection: as an engine option (engine.execution_options) it made a copy of the
# engine, whose joined event dispatch cost ~200 Python calls a submit
AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


class Database:
    """One engine per process and settings; `session()` is a unit of work that commits or rolls back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self, autocommit: bool = False) -> Iterator[Session]:
        """`autocommit`: each statement commits by itself, no BEGIN and no COMMIT (two round trips fewer), for a
        unit of work that reads, then writes in its last statement (a submit): under PostgreSQL's READ COMMITTED
        each statement sees its own snapshot anyway, and no write is left to undo when a statement fails."""
        with self._sessions() as s:
            if autocommit:
                s.connection(execution_options=AUTOCOMMIT)
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
