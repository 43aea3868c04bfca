"""The submit path after issue 20's stall hunt: what gunicorn's master warms before it forks (and that it opens no
connection doing so) and each worker before it serves, the tenant limits read in one query that reads few rows
whatever the table holds (and Retry-After when the window frees a place), the indexes that keep it so, and the
embedded default's broker transport. Behaviour only: the speed lives in benchmarks/bench_api.py and
bench_latency.py."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest

WARM_THEN_REPORT = """
import json, sys
from service.config import Settings
from service.runtime import Runtime
from service import gunicorn_conf
import worker.models as models

settings = Settings.from_env(env={}, data_dir=sys.argv[1], database_url=sys.argv[2], broker_url=sys.argv[3])
rt = Runtime(settings)
before = {m for m in ("psycopg", "redis", "kombu.transport.redis", "transformers") if m in sys.modules}
gunicorn_conf.warm_adapters(rt)
gunicorn_conf.warm_clients(rt)
pool = rt.db.engine.pool
print(json.dumps({"before": sorted(before),
                  "after": sorted(m for m in ("psycopg", "redis", "kombu.transport.redis", "transformers")
                                  if m in sys.modules),
                  "cached": len(models._cache), "zoo": len(models.zoo_names()),
                  "db_connections": pool.checkedin() + pool.checkedout()}))
"""


def test_the_api_master_warms_models_and_clients_without_connecting(pg_url, redis_url, tmp_path):
    """What each gunicorn worker paid on its first submits (2-4 s: the stall), the master now pays before the port
    opens; it opens no database connection doing so (a pool must not cross a fork)."""
    out = subprocess.run([sys.executable, "-c", WARM_THEN_REPORT, str(tmp_path), pg_url, redis_url],
                         capture_output=True, text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["before"] == []  # a clean process: these are the warm-up's doing
    assert report["after"] == ["kombu.transport.redis", "psycopg", "redis", "transformers"]
    assert report["cached"] == min(4, report["zoo"])  # the model cache's bound (LANTERN_MODEL_CACHE_SIZE)
    assert report["db_connections"] == 0


@pytest.mark.parametrize("backend", ["postgres"])
def test_each_api_worker_warms_its_connections_before_it_serves(runtime):
    """gunicorn_conf.warm_worker: a connection for each thread in the pool, the submit path's reads compiled once
    (the engine's statement cache holds them) and the broker's publishing client connected, so the first submits
    of a new worker do not pay for them (its first answer took ~40-65 ms, the burst behind it up to ~180 ms)."""
    import os

    from service import gunicorn_conf

    engine = runtime.db.engine
    cached = len(engine._compiled_cache)
    gunicorn_conf.warm_worker(runtime, 3)
    assert engine.pool.checkedin() == 3 and engine.pool.checkedout() == 0
    assert len(engine._compiled_cache) >= cached + 3
    assert runtime.celery._lantern_push[0] == os.getpid()


def test_a_worker_warm_up_that_fails_does_not_stop_the_worker(tmp_path, caplog):
    """With PostgreSQL and Redis unreachable the warm-up logs why, each apart (the error's type, no address or
    text), and returns; the worker serves, and its requests get their 503s."""
    from service import gunicorn_conf
    from service.runtime import Runtime
    from tests.helpers import free_port, make_settings

    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    runtime = Runtime(make_settings(tmp_path, "postgres", dead, f"redis://127.0.0.1:{free_port()}/0"))
    try:
        gunicorn_conf.warm_worker(runtime, 2)
    finally:
        runtime.close()
    assert "could not warm this worker's database connections: OperationalError" in caplog.text
    assert "could not connect this worker to the broker: OperationalError" in caplog.text


def test_in_flight_limit_refuses_at_the_limit(runtime):
    from dataclasses import replace

    from service import jobs
    from service.auth import ensure_tenant
    from service.errors import Problem

    settings = replace(runtime.settings, max_in_flight=2, rate_per_minute=10**6)
    with runtime.db.session() as s:
        tenant = ensure_tenant(s, f"busy-{uuid.uuid4().hex[:8]}")
        s.flush()
        for i in range(5):
            jobs.create(s, tenant.id, {"model": "minilm-rt", "seed": i}, "r", "q", None, f"d{i}")
    with runtime.db.session() as s, pytest.raises(Problem) as refused:
        check_limits(s, tenant.id, settings)
    assert refused.value.status == 429
    assert "5 jobs in flight; the limit is 2" in refused.value.detail


def test_rate_limit_waits_until_the_window_frees_a_place(runtime):
    """Three jobs in the last minute (50, 30 and 10 s ago) with a limit of 2: a place frees when the limit's
    oldest (30 s ago) leaves the window, in ~30 s; not when the oldest of all does (~10 s, which would be
    refused again)."""
    from dataclasses import replace

    from sqlalchemy import update

    from service import jobs
    from service.auth import ensure_tenant
    from service.db import Job, utcnow
    from service.errors import Problem

    settings = replace(runtime.settings, max_in_flight=10**6, rate_per_minute=2)
    now = utcnow()
    with runtime.db.session() as s:
        tenant = ensure_tenant(s, f"chatty-{uuid.uuid4().hex[:8]}")
        s.flush()
        for age in (50, 30, 10):
            job = jobs.create(s, tenant.id, {"model": "minilm-rt", "seed": age}, "r", "q", None, f"d{age}")
            s.execute(update(Job).where(Job.id == job.id).values(created_at=now - timedelta(seconds=age)))
    with runtime.db.session() as s, pytest.raises(Problem) as refused:
        check_limits(s, tenant.id, settings)
    assert "more than 2 jobs a minute" in refused.value.detail
    assert 29 <= int(refused.value.headers["Retry-After"]) <= 32
    with runtime.db.session() as s:  # under the limit: no refusal
        check_limits(s, tenant.id, replace(settings, rate_per_minute=4))


def test_a_limit_of_zero_is_no_limit(api, runtime):
    """LANTERN_MAX_IN_FLIGHT=0 and LANTERN_RATE_PER_MINUTE=0 turn those limits off (a single-tenant deployment, the
    open-loop bench): never a 429, and the submit's query does not count what it would not judge."""
    from dataclasses import replace

    from service import jobs
    from service.db import Job

    runtime.settings = replace(runtime.settings, max_in_flight=0, rate_per_minute=0)
    body = {"model": "minilm-rt", "inputs": {"text": "A gripping film."}, "methods": ["gradient"]}
    answers = [api.post("/v1/jobs", json={**body, "seed": i}) for i in range(4)]
    assert [a.status_code for a in answers] == [202] * 4
    with runtime.db.session() as s:
        tenant_id = s.get(Job, answers[0].get_json()["id"]).tenant_id
        limits = jobs.model_and_limits(s, tenant_id, "minilm-rt", runtime.settings)[1]
    assert (limits.in_flight, limits.limit_reached_at) == (0, None)  # not read
    runtime.settings = replace(runtime.settings, max_in_flight=4)
    assert api.post("/v1/jobs", json={**body, "seed": 9}).status_code == 429  # the 4 queued count once it is on


@pytest.mark.parametrize("backend", ["postgres"])
def test_the_in_flight_count_reads_only_the_tenants_jobs_in_flight(runtime):
    """The limits' count reads the tenant's own jobs in flight from ix_jobs_tenant_in_flight, whatever the tenant's
    history and the other tenants' backlog hold: without it PostgreSQL scanned every queued job of every tenant
    (ix_jobs_status_lease) or the whole table, and a submit's cost grew with them; the per-minute window reads the
    tenant's own submissions (ix_jobs_own_created), not the audit's batch jobs of the last minute."""
    from service import jobs

    statement = jobs._model_and_limits(True, True)
    for plan in plans_over_history(runtime, statement, {**jobs._limits_params("t-busy", runtime.settings),
                                                        "name": "minilm-rt"}):
        assert "ix_jobs_tenant_in_flight" in plan and "ix_jobs_own_created" in plan, plan


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("status", ["running", "failed"])
def test_a_listing_of_one_status_reads_only_that_status(runtime, status):
    """GET /v1/jobs?status=running (a dashboard watching its jobs) or a rare status: the page PostgreSQL reads comes
    from the tenant's own jobs of that status, not from its whole history newest first until it has found a page."""
    from service import jobs
    from service.db import Job

    statement = jobs.page_statement(jobs.listing_statement("t-busy", status, None), Job, 50, None)
    for plan in plans_over_history(runtime, statement, {}):
        # ix_jobs_own_status, or ix_jobs_status_lease where that status is rare everywhere: never the history
        assert "ix_jobs_tenant_created" not in plan and "Seq Scan" not in plan, plan


def test_the_rate_limit_counts_submissions_not_an_audits_batches(runtime):
    """An audit's batch jobs are made by the service, not submitted: an audit of many batches must not spend the
    tenant's submissions a minute (it made every POST /v1/jobs a 429 for a minute)."""
    from dataclasses import replace

    from service import jobs
    from service.auth import ensure_tenant
    from service.db import Audit, Job
    from service.errors import Problem

    settings = replace(runtime.settings, max_in_flight=0, rate_per_minute=2)
    with runtime.db.session() as s:
        tenant = ensure_tenant(s, f"auditor-{uuid.uuid4().hex[:8]}")
        s.flush()
        audit = Audit(tenant_id=tenant.id, request={})
        s.add(audit)
        s.flush()
        for i in range(4):
            s.add(Job(tenant_id=tenant.id, audit_id=audit.id, kind="audit_batch", model_name="minilm-rt",
                      model_revision="r", request={}, request_hash=f"b{i}", queue="q"))
    with runtime.db.session() as s:
        check_limits(s, tenant.id, settings)  # 4 batches in the last minute, no submission: no refusal
        jobs.create(s, tenant.id, {"model": "minilm-rt", "seed": 1}, "r", "q", None, "d1")
        jobs.create(s, tenant.id, {"model": "minilm-rt", "seed": 2}, "r", "q", None, "d2")
    with runtime.db.session() as s, pytest.raises(Problem) as refused:
        check_limits(s, tenant.id, settings)
    assert "more than 2 jobs a minute" in refused.value.detail


def plans_over_history(runtime, statement, values: dict) -> list[str]:
    """PostgreSQL's plans for `statement` as psycopg sends it (its values as parameters) over 40,000 jobs, half a
    tenant's history (finished jobs, and 10,000 batch jobs its audit made in the last minute) and half another
    tenant's backlog (queued and running): the plan for these values, and the generic plan PostgreSQL may adopt for
    a statement psycopg has prepared (after 5 runs), which must do without them. In a transaction that is rolled
    back."""
    import re

    from psycopg import sql as pgsql
    from sqlalchemy import text

    sent = statement.compile(dialect=runtime.db.engine.dialect).construct_expanded_state(values)
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sent.statement)))
    numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", sent.statement)
    plans = []
    with runtime.db.engine.connect() as conn, conn.begin() as transaction:
        for tenant in ("t-busy", "t-backlog"):
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES (:t, :t, now())"), {"t": tenant})
        conn.execute(text("INSERT INTO audits (id, tenant_id, status, request, total, done, failed, version,"
                          " cancel_requested, created_at) VALUES ('a-busy', 't-busy', 'running', '{}', 0, 0, 0, 0,"
                          " false, now())"))
        conn.execute(text(
            "INSERT INTO jobs (id, tenant_id, audit_id, kind, status, model_name, model_revision, request,"
            " request_hash, queue, progress, attempts, cancel_requested, created_at, updated_at)"
            " SELECT md5(i::text), CASE WHEN i % 2 = 0 THEN 't-busy' ELSE 't-backlog' END,"
            " CASE WHEN i % 4 = 0 THEN 'a-busy' END, 'explain',"
            " CASE WHEN i % 2 = 0 THEN 'succeeded' WHEN i % 4 = 1 THEN 'queued' ELSE 'running' END,"
            " 'minilm-rt', 'r', '{}', 'h', 'q', 0, 0, false,"
            " CASE WHEN i % 4 = 0 THEN now() - interval '30 s' + i * interval '0.1 ms'"  # an audit's batches, lately
            " ELSE now() - interval '1 day' + i * interval '1 ms' END, now() FROM generate_series(1, 40000) i"))
        conn.execute(text("ANALYZE jobs"))
        driver = conn.connection.driver_connection
        arguments = ", ".join(pgsql.Literal(sent.parameters[name]).as_string(driver).replace("%", "%%")
                              for name in names)
        conn.exec_driver_sql(f"PREPARE plan_check AS {numbered.replace('%', '%%')}")
        try:
            for mode in ("force_custom_plan", "force_generic_plan"):
                conn.exec_driver_sql(f"SET LOCAL plan_cache_mode = {mode}")
                execute = f"EXECUTE plan_check({arguments})" if arguments else "EXECUTE plan_check"
                plans.append("\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {execute}")))
        finally:
            conn.exec_driver_sql("DEALLOCATE plan_check")  # a rollback does not undo a PREPARE
        transaction.rollback()
    with runtime.db.engine.begin() as conn:  # the row counts ANALYZE wrote outlive the rollback: count them again
        conn.execute(text("ANALYZE jobs"))
    return plans


def test_the_indexes_and_their_migration_name_the_same_rows():
    """alembic's comparison of schema and migrations does not compare a partial index's condition: this does."""
    import importlib

    from service.db import IN_FLIGHT_ROWS, OWN_JOBS

    migration = importlib.import_module("migrations.versions.0006_own_job_indexes")
    assert (migration.OWN_JOBS.text, migration.IN_FLIGHT_ROWS.text) == (OWN_JOBS.text, IN_FLIGHT_ROWS.text)


def test_gunicorn_runs_the_worker_warm_up():
    """gunicorn ignores a setting it does not know, so a misnamed hook would be silently skipped: load the config
    file as `lantern serve` names it (`--config python:service.gunicorn_conf`) and find the hooks in what gunicorn
    kept."""
    from gunicorn.app.base import Application
    from gunicorn.config import Config

    from service import gunicorn_conf

    class Loader(Application):  # gunicorn's own config-file loading, without its command line or an app
        def __init__(self) -> None:
            self.usage, self.prog, self.callable, self.cfg = None, None, None, Config()

        def load(self) -> None:
            pass

    loader = Loader()
    loader.load_config_from_module_name_or_filename("python:service.gunicorn_conf")
    for name in ("post_worker_init", "post_fork", "pre_fork", "on_starting"):
        assert getattr(loader.cfg, name) is getattr(gunicorn_conf, name), name


def test_over_the_limits_a_bad_request_is_still_a_422(runtime, new_key):
    """A submit reads the tenant limits with its model (jobs.model_and_limits) but judges them last, as when they
    were read last: an unknown model, a request the model refuses and an unknown compare_with model are 422s for
    a tenant at its limit, and only a good request is the 429."""
    from dataclasses import replace

    from service.app import create_app
    from tests.helpers import Api

    runtime.settings = replace(runtime.settings, max_in_flight=1)
    api = Api(create_app(runtime=runtime), new_key("full"))
    body = {"model": "minilm-rt", "inputs": {"text": "A gripping film."}, "methods": ["gradient"]}
    assert api.post("/v1/jobs", json=body).status_code == 202
    for bad, field in (({"model": "gpt-17"}, "model"), ({"inputs": {"text": "good " * 600}}, "inputs"),
                       ({"compare_with": ["gpt-17"]}, "compare_with")):
        resp = api.post("/v1/jobs", json={**body, **bad})
        assert resp.status_code == 422 and field in json.dumps(resp.get_json().get("errors")), resp.get_json()
    assert api.post("/v1/jobs", json={**body, "seed": 1}).status_code == 429


def test_create_stamps_enqueued_at_in_the_insert(runtime):
    from service import jobs
    from service.auth import ensure_tenant
    from service.db import Job, utcnow

    at = utcnow()
    with runtime.db.session() as s:
        tenant = ensure_tenant(s, f"t-{uuid.uuid4().hex[:8]}")
        s.flush()
        job_id = jobs.create(s, tenant.id, {"model": "minilm-rt"}, "r", "q", None, "d", at).id
    with runtime.db.session() as s:
        assert s.get(Job, job_id).enqueued_at == at


def test_the_embedded_broker_is_polled_often_and_still_carries_messages(tmp_path):
    from service.config import Settings
    from service.queue import PolledSQLTransport, held_job_ids, make_celery, send_job

    settings = Settings.from_env(env={}, data_dir=str(tmp_path))
    assert settings.broker.startswith("sqla+sqlite")
    tmp_path.mkdir(exist_ok=True)
    app = make_celery(settings)
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, PolledSQLTransport)
        assert conn.transport.polling_interval <= 0.1
    send_job(app, "job-1", settings.job_queue)
    assert held_job_ids(app, [settings.job_queue]) == {"job-1"}


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_submit_is_three_statements(api, runtime, monkeypatch):
    """POST /v1/jobs on PostgreSQL: the key with its tenant (one query), the tenant's model with the tenant limits
    (one query), the INSERT — and nothing per submit for a zoo model's revision (re-stamped at most once a second). Counted at
    the driver, BEGIN/COMMIT and the pool's pre-ping aside; a new statement on this path should be a decision.
    The key is looked up each time here (a proven key skips it for a second: tests/integration/test_submit_auth.py)."""
    from sqlalchemy import event

    from service import auth

    monkeypatch.setattr(auth, "VERIFIED_SECONDS", 0.0)

    body = {"model": "minilm-rt", "inputs": {"text": "A gripping film."}, "methods": ["gradient"]}
    assert api.post("/v1/jobs", json=body).status_code == 202  # warm: tokenizer, revision, last_used_at
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.strip().lower() not in ("select 1", "begin", "commit"):
            seen.append(statement.split()[0].upper())

    event.listen(runtime.db.engine, "before_cursor_execute", count)
    try:
        assert api.post("/v1/jobs", json={**body, "seed": 1}).status_code == 202
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", count)
    assert seen == ["SELECT", "SELECT", "INSERT"], seen


def check_limits(session, tenant_id: str, settings) -> None:
    """The tenant limits as a submit reads and judges them (with its model: service.jobs.model_and_limits)."""
    from service import jobs

    jobs.model_and_limits(session, tenant_id, "minilm-rt", settings)[1].check(settings)
