"""A submit's exchanges with PostgreSQL, counted on the wire (libpq's trace of every pooled connection: one
ReadyForQuery from the server ends each exchange), the pool's pings included: each is a wait on PostgreSQL and,
on a 2-core host, a context switch to its backend (issue 20: they were most of a submit's time at 200 req/s)."""
from __future__ import annotations

import re
import tempfile

import psycopg
import pytest
from sqlalchemy import event

MESSAGE = re.compile(r"^([FB])\t\d+\t(.*)$", re.MULTILINE)  # a traced message: its side, length, type and text
WORD = re.compile(r'"([^"\s]*)')  # the words in quotes: Query "BEGIN", Parse "" "SELECT …
BODY = {"model": "minilm-rt", "inputs": {"text": "A gripping film."}, "methods": ["gradient"]}


class WireTrace:
    """libpq's protocol trace of every connection the engine opens from now on (the pool emptied first)."""

    def __init__(self, engine) -> None:
        from psycopg import pq

        self.engine, self.file = engine, tempfile.TemporaryFile()
        self.traced: list[psycopg.Connection] = []
        self.flags = pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE
        engine.dispose()  # a connection opened before now would go untraced
        event.listen(engine, "connect", self._trace)

    def _trace(self, dbapi_conn, _record=None) -> None:
        dbapi_conn.pgconn.trace(self.file.fileno())
        dbapi_conn.pgconn.set_trace_flags(self.flags)
        if dbapi_conn not in self.traced:
            self.traced.append(dbapi_conn)

    def restart(self) -> None:
        """Count from here on, on the same connections."""
        self._untrace()
        self.file = tempfile.TemporaryFile()
        for conn in self.traced:
            if not conn.closed:
                self._trace(conn)

    def _untrace(self) -> None:
        for conn in self.traced:
            if not conn.closed:
                conn.pgconn.untrace()  # flushes what libpq buffered

    def exchanges(self) -> list[str]:
        """The exchanges so far, each named by the first word of the client's statement in it (BEGIN, SELECT …)."""
        self._untrace()
        event.remove(self.engine, "connect", self._trace)
        self.file.seek(0)
        out, first = [], None
        for side, message in MESSAGE.findall(self.file.read().decode()):  # (a statement's text spans lines)
            if side == "F" and first is None:
                first = next((word for word in WORD.findall(message) if word), "?")
            elif side == "B" and message.startswith("ReadyForQuery"):
                out.append(first or "?")
                first = None
        return out


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_submit_is_two_exchanges_with_postgresql(api, runtime, monkeypatch):
    """A proven key, a connection in steady use: one SELECT (the model and the tenant limits), the INSERT, each
    committing by itself. Were six: the pool's pre-ping on every checkout, BEGIN, the model and the limits read
    apart, the INSERT, COMMIT."""
    from service import auth

    monkeypatch.setattr(auth, "VERIFIED_SECONDS", 60.0)  # the warm-up may take longer than the real delay
    trace = WireTrace(runtime.db.engine)
    assert api.post("/v1/jobs", json=BODY).status_code == 202  # warm: tokenizer, revision, the key, a connection
    trace.restart()
    assert api.post("/v1/jobs", json={**BODY, "seed": 1}).status_code == 202
    assert trace.exchanges() == ["SELECT", "INSERT"]
