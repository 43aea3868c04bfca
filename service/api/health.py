"""Liveness, readiness (database, broker, storage) and Prometheus metrics; no key needed."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from service.api.base import problem_response, runtime
from service.errors import Problem
from service.queue import broker_ok

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz():
    rt = runtime()
    checks = {}
    for name, check in (("database", lambda: _db(rt)), ("broker", lambda: broker_ok(rt.celery)),
                        ("storage", rt.store.check)):
        try:
            check()
            checks[name] = "ok"
        except Exception as e:  # report which part is down and why, never crash
            checks[name] = f"{type(e).__name__}: {str(e)[:200]}"
    if all(v == "ok" for v in checks.values()):
        return jsonify(status="ready", checks=checks)
    problem = Problem(503, "Not ready", "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"),
                      headers={"Retry-After": "5"})
    problem.errors = {"checks": checks}
    return problem_response(problem)


def _db(rt) -> None:
    from alembic.runtime.migration import MigrationContext

    with rt.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        revision = MigrationContext.configure(conn).get_current_revision()
    if revision is None:
        raise RuntimeError("the schema is not migrated; run `lantern migrate`")


@blp.get("/metrics")
def metrics():
    return Response(current_app.extensions["lantern.metrics"].render(), mimetype="text/plain; version=0.0.4")
