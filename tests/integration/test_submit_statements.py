"""The submit path's work after issue 20's CPU cuts: with the caller's key proven (service/auth.py's verified-key
cache) a submit is two statements, and the job document it answers — built from the row it inserted, without
reading it back — is the one the database then serves."""
from __future__ import annotations

import pytest
from sqlalchemy import event

BODY = {"model": "minilm-rt", "inputs": {"text": "A gripping film."}, "methods": ["gradient"]}


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_submit_with_a_proven_key_is_two_statements(api, runtime, monkeypatch):
    """The tenant's model with the tenant limits (one SELECT), the INSERT; counted at the driver (BEGIN/COMMIT
    aside; tests/integration/test_submit_round_trips.py counts every exchange, pings included)."""
    from service import auth

    monkeypatch.setattr(auth, "VERIFIED_SECONDS", 60.0)  # the warm-up may take longer than the real delay
    assert api.post("/v1/jobs", json=BODY).status_code == 202  # warm: tokenizer, revision, the key proven
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.strip().lower() not in ("select 1", "begin", "commit"):
            seen.append(" ".join(statement.split()).upper())

    event.listen(runtime.db.engine, "before_cursor_execute", count)
    try:
        assert api.post("/v1/jobs", json={**BODY, "seed": 1}).status_code == 202
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", count)
    assert [s.split()[0] for s in seen] == ["SELECT", "INSERT"], seen
    assert "FROM MODELS" in seen[0] and "FROM JOBS" in seen[0] and seen[1].startswith("INSERT INTO JOBS"), seen


def test_the_submit_answer_is_the_stored_job(api):
    """Every field of the 202's document (defaults included: status, progress, attempts, history, timestamps) as
    GET then reads it from the row."""
    posted = api.post("/v1/jobs", json={**BODY, "seed": 7}, headers={"Idempotency-Key": "stored-1"})
    assert posted.status_code == 202
    sent = posted.get_json()
    stored = api.get(f"/v1/jobs/{sent['id']}").get_json()
    assert sent["status"] == "queued" and sent["attempts"] == 0 and sent["attempt_history"] == []
    assert {k: v for k, v in stored.items() if k != "result"} == {k: v for k, v in sent.items() if k != "result"}
    replay = api.post("/v1/jobs", json={**BODY, "seed": 7}, headers={"Idempotency-Key": "stored-1"})
    assert replay.get_json() == {**sent, "result": replay.get_json()["result"]}


def test_unset_columns_of_the_inserted_job_are_sql_null(api, runtime):
    """The Core INSERT leaves what a new job does not have yet (result, error, …) as SQL NULL, as the ORM did: a
    JSON column given None would hold the JSON text 'null', and `result IS NULL` would miss it."""
    from sqlalchemy import text

    job_id = api.post("/v1/jobs", json={**BODY, "seed": 3}).get_json()["id"]
    with runtime.db.engine.connect() as conn:
        row = conn.execute(text("SELECT result IS NULL, error IS NULL, idempotency_key IS NULL FROM jobs "
                                "WHERE id = :id"), {"id": job_id}).one()
    assert tuple(row) == (True, True, True)
