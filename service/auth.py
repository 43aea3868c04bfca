"""Tenants and bearer keys. Keys are `lt_<key id>_<secret>`; only the sha256 of the whole key is stored."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import ApiKey, Tenant, changed, utcnow
from service.errors import Problem, not_found

PREFIX = "lt_"
MAX_EXPIRES_DAYS = 36_500  # beyond this, datetime arithmetic overflows soon enough to matter
# A key proven against the database is taken on trust for this long (per process): a request then costs no
# session, no SELECT and no pool pre-ping (~0.7 ms of a submit's ~6 ms CPU). A revocation or expiry written by
# another process (the CLI, another API worker) ends access within this delay; one made here, at once.
VERIFIED_SECONDS = 1.0
VERIFIED_MAX = 4096  # entries; only keys that passed are kept, so only real keys can fill it


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    tenant: str
    key_id: str


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).first()
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str, expires_days: float | None = None) -> tuple[ApiKey, str]:
    """Make a key for the tenant (created if needed). The plain key is returned once and never stored.
    `expires_days` None: the key never expires; otherwise a positive number of days, at most MAX_EXPIRES_DAYS."""
    check_expiry(expires_days)
    tenant = ensure_tenant(session, tenant_name)
    key_id = secrets.token_hex(6)
    plain = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    expires = utcnow() + timedelta(days=expires_days) if expires_days is not None else None
    row = ApiKey(id=key_id, tenant_id=tenant.id, secret_hash=_digest(plain), expires_at=expires)
    session.add(row)
    session.flush()
    return row, plain


def check_expiry(expires_days: float | None) -> None:
    """0 once meant "never expires" by accident; a key that never expires is asked for by giving no expiry."""
    if expires_days is not None and not 0 < expires_days <= MAX_EXPIRES_DAYS:  # also refuses NaN
        raise ValueError(f"expiry must be more than 0 and at most {MAX_EXPIRES_DAYS} days; "
                         "for a key that never expires, give none")


def list_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(select(ApiKey, Tenant.name).join(Tenant).order_by(Tenant.name, ApiKey.created_at))
    return [(k, name) for k, name in rows]


def revoke_key(session: Session, key_id: str) -> None:
    _verified.forget(key_id)
    done = changed(session, update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                           .values(revoked_at=utcnow()))
    if not done and session.get(ApiKey, key_id) is None:
        raise not_found(f"key {key_id}")


def authenticate(session: Session, header: str | None) -> Caller:
    """401 for a missing, malformed, unknown, expired or revoked key."""
    if not header or not header.startswith("Bearer "):
        raise unauthorized("send an API key as 'Authorization: Bearer <key>'")
    plain = header[len("Bearer "):].strip()
    digest = _digest(plain)
    where = (session.get_bind().engine.url, digest)  # a process may serve several databases (tests do)
    caller = _verified.get(where)
    if caller is not None:
        return caller
    parts = plain[len(PREFIX):].split("_", 1) if plain.startswith(PREFIX) else []
    found = key_and_tenant(session, parts[0]) if len(parts) == 2 else None
    if found is None or not hmac.compare_digest(found[0].secret_hash, digest):
        raise unauthorized("unknown API key")
    caller = _caller(*found)
    _verified.put(where, caller, found[0].expires_at)
    return caller


def authenticate_key_id(session: Session, key_id: str) -> Caller:
    """The caller of a key already proven once (the web UI's session holds its id, never the key): 401 when the
    key is gone, expired or revoked since."""
    found = key_and_tenant(session, key_id)
    if found is None:
        raise unauthorized("unknown API key")
    return _caller(*found)


def key_and_tenant(session: Session, key_id: str) -> tuple[ApiKey, Tenant] | None:
    """The key's row and its tenant's in one round trip (every request authenticates)."""
    row = session.execute(select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
                          .where(ApiKey.id == key_id)).first()
    return None if row is None else (row[0], row[1])


def _caller(row: ApiKey, tenant: Tenant) -> Caller:
    now = utcnow()
    if row.revoked_at is not None:
        raise unauthorized("this API key was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise unauthorized("this API key has expired")
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):  # cheap, coarse bookkeeping
        row.last_used_at = now
    return Caller(tenant.id, tenant.name, row.id)


class _VerifiedKeys:
    """Callers of keys proven in the last VERIFIED_SECONDS, by (database, sha256 of the whole key): a hit needs the
    exact key, as the database check does. Not a way around expiry: an entry ends at its key's expiry too."""

    def __init__(self) -> None:
        self._entries: dict[tuple[object, str], tuple[float, datetime | None, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, where: tuple[object, str]) -> Caller | None:
        entry = self._entries.get(where)
        if entry is None:
            return None
        proven_at, expires_at, caller = entry
        if time.monotonic() - proven_at >= VERIFIED_SECONDS or (expires_at is not None and expires_at <= utcnow()):
            self._entries.pop(where, None)
            return None
        return caller

    def put(self, where: tuple[object, str], caller: Caller, expires_at: datetime | None) -> None:
        with self._lock:
            if len(self._entries) >= VERIFIED_MAX:
                self._entries.clear()  # only an odd deployment has this many live keys: it re-proves them
            self._entries[where] = (time.monotonic(), expires_at, caller)

    def forget(self, key_id: str) -> None:
        with self._lock:
            for where in [w for w, (_, _, c) in list(self._entries.items()) if c.key_id == key_id]:
                self._entries.pop(where, None)


_verified = _VerifiedKeys()


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="lantern"'})


def describe_key(key: ApiKey, tenant: str, now: datetime | None = None) -> dict:
    now = now or utcnow()
    state = "revoked" if key.revoked_at else "expired" if key.expires_at and key.expires_at <= now else "active"
    return {"id": key.id, "tenant": tenant, "state": state, "created_at": key.created_at.isoformat(),
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
            "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None}
