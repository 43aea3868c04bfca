"""The verified-key cache on the submit path (service/auth.py, issue 20): a key proven once is taken on trust for
VERIFIED_SECONDS without a query, and nothing else about a key's checks changes — a wrong secret, a revocation or
an expiry written elsewhere ends access within that delay, a revocation made in the process at once."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import event, update

from service.db import ApiKey, utcnow

pytestmark = pytest.mark.postgres


def statements_of(runtime, call) -> list[str]:
    """The SQL statements `call()` sends (pool pre-ping, BEGIN and COMMIT aside)."""
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.strip().lower() not in ("select 1", "begin", "commit"):
            seen.append(statement)

    event.listen(runtime.db.engine, "before_cursor_execute", count)
    try:
        call()
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", count)
    return seen


def key_id(key: str) -> str:
    return key.split("_")[1]


def test_a_proven_key_is_not_looked_up_again_within_the_delay(api, runtime):
    assert api.get("/v1/jobs").status_code == 200
    again = statements_of(runtime, lambda: api.get("/v1/jobs"))
    assert again and not [s for s in again if "api_keys" in s], again  # the listing, without the key's lookup
    time.sleep(1.05)  # VERIFIED_SECONDS later the key is proven again
    later = statements_of(runtime, lambda: api.get("/v1/jobs"))
    assert [s for s in later if "api_keys" in s], later


def test_a_wrong_secret_for_a_proven_key_id_is_refused(api):
    assert api.get("/v1/jobs").status_code == 200
    forged = api.key[:-4] + ("AAAA" if not api.key.endswith("AAAA") else "BBBB")
    assert api.as_(forged).get("/v1/jobs").status_code == 401


def test_a_revocation_written_elsewhere_ends_access_within_the_delay(api, runtime):
    """As `lantern keys revoke` in another process, or another API worker, writes it: the row only."""
    from service.auth import VERIFIED_SECONDS

    assert api.get("/v1/jobs").status_code == 200
    with runtime.db.session() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id(api.key)).values(revoked_at=utcnow()))
    time.sleep(VERIFIED_SECONDS)
    assert api.get("/v1/jobs").status_code == 401


def test_a_revocation_in_this_process_ends_access_at_once(api, runtime):
    from service.auth import revoke_key

    assert api.post("/v1/jobs", json={"model": "minilm-rt", "inputs": {"text": "A fine film."},
                                      "methods": ["gradient"]}).status_code == 202
    with runtime.db.session() as s:
        revoke_key(s, key_id(api.key))
    assert api.get("/v1/jobs").status_code == 401


def test_a_proven_key_still_expires_on_time(api, runtime, monkeypatch):
    """The entry ends at its key's expiry even when the trust delay is longer."""
    from service import auth

    monkeypatch.setattr(auth, "VERIFIED_SECONDS", 60.0)
    with runtime.db.session() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id(api.key))
                  .values(expires_at=utcnow() + timedelta(seconds=0.5)))
    assert api.get("/v1/jobs").status_code == 200
    time.sleep(0.6)
    assert api.get("/v1/jobs").status_code == 401
