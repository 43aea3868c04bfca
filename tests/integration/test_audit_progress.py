"""Audit progress on both backends: each finished batch folds its items into the aggregates kept on the audit row,
so GET /v1/audits/{id} reads them and recomputes nothing (the final report aggregates every item once); the
document answers an ETag and 304 as jobs do; the lifecycle's transitions are fenced."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from service import audit_lifecycle as lifecycle
from service.db import AuditItem, Job
from tests.unit.test_running_aggregates import assert_close

pytestmark = pytest.mark.postgres

ITEMS = [{"text": "A gripping, beautifully acted film.", "label": "positive"},
         {"text": "Dull, lifeless and far too long.", "label": "negative"},
         {"text": "The plot is a mess and the jokes fall flat.", "label": "negative"},
         {"text": "It is the best film of the year.", "label": "positive"},
         {"text": "A joyous romp.", "label": "positive"}]


def _submit(api, batch_size: int = 2) -> str:
    resp = api.post("/v1/audits", json={"model": "minilm-rt", "corpus": {"items": ITEMS},
                                        "methods": ["gradient", "grad_x_input"], "batch_size": batch_size})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def _children(runtime, audit_id: str, kind: str) -> list[str]:
    with runtime.db.session() as s:
        return list(s.scalars(select(Job.id).where(Job.audit_id == audit_id, Job.kind == kind)
                              .order_by(Job.request["batch"].as_integer())))


def test_get_reads_the_aggregates_each_finished_batch_folded(api, runtime, monkeypatch):
    import worker.report as report
    from worker.runner import run_job

    recompute = report.aggregate
    calls = {"aggregate": 0, "fold_batch": 0}
    for name in calls:
        real = getattr(report, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(report, name, counted)

    audit_id = _submit(api)
    doc = api.get(f"/v1/audits/{audit_id}").get_json()
    assert doc["aggregates"] is None and doc["counts"] == {"total": 5, "done": 0, "failed": 0}
    for n, job_id in enumerate(_children(runtime, audit_id, "audit_batch"), 1):
        assert run_job(runtime, job_id, "w1") == "succeeded"
        done = min(2 * n, 5)
        for _ in range(3):  # reads cost no aggregation
            doc = api.get(f"/v1/audits/{audit_id}").get_json()
        assert doc["status"] == "running" and doc["counts"]["done"] == done and doc["progress"] == done / 5
        assert doc["aggregates"]["models"]["minilm-rt"]["items"] == done
        assert calls == {"aggregate": 0, "fold_batch": n}  # one fold per batch, nothing per read
        with runtime.db.session() as s:
            so_far = lifecycle.item_results(s, audit_id)
        assert_close(doc["aggregates"], recompute(so_far, doc["request"]))  # the final report's numbers so far

    lifecycle.release_finalizers(runtime.db, lambda job_id, queue: None)
    assert run_job(runtime, _children(runtime, audit_id, "audit_finalize")[0], "w1") == "succeeded"
    final = api.get(f"/v1/audits/{audit_id}").get_json()
    assert final["status"] == "succeeded" and calls["aggregate"] == 1  # the full aggregates, once, at the end
    assert_close(final["aggregates"], doc["aggregates"])


def test_get_answers_an_etag_and_304_until_the_audit_changes(api, runtime, new_key):
    from worker.runner import run_job

    audit_id = _submit(api, batch_size=5)
    first = api.get(f"/v1/audits/{audit_id}")
    etag = first.headers["ETag"]
    assert first.status_code == 200 and first.headers["Retry-After"] and first.get_json()["id"] == audit_id
    again = api.get(f"/v1/audits/{audit_id}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag

    assert run_job(runtime, _children(runtime, audit_id, "audit_batch")[0], "w1") == "succeeded"
    moved = api.get(f"/v1/audits/{audit_id}", headers={"If-None-Match": etag})
    assert moved.status_code == 200 and moved.headers["ETag"] != etag
    assert moved.get_json()["counts"]["done"] == 5
    assert api.get(f"/v1/audits/{audit_id}", headers={"If-None-Match": moved.headers["ETag"]}).status_code == 304

    assert api.delete(f"/v1/audits/{audit_id}").status_code == 202
    cancelled = api.get(f"/v1/audits/{audit_id}", headers={"If-None-Match": moved.headers["ETag"]})
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert "Retry-After" not in cancelled.headers
    stranger = api.as_(new_key("other"))
    assert stranger.get(f"/v1/audits/{audit_id}", headers={"If-None-Match": etag}).status_code == 404


def test_transitions_are_fenced_by_the_lease(api, runtime):
    audit_id = _submit(api, batch_size=5)
    batch = _children(runtime, audit_id, "audit_batch")[0]
    final = _children(runtime, audit_id, "audit_finalize")[0]
    with runtime.db.session() as s:
        item = s.scalars(select(AuditItem.id).where(AuditItem.audit_id == audit_id)).first()
    assert item is not None
    # no worker holds these jobs: an item, a fold or the audit's end written now would be a lost worker's
    assert not lifecycle.record_item(runtime.db, item, batch, "w-lost", "done", 1, result={})
    assert not lifecycle.fold_batch(runtime.db, audit_id, batch, "w-lost", lambda s, state: pytest.fail())
    assert lifecycle.finish(runtime.db, audit_id, final, "w-lost", {"models": {}}, []) is None
    doc = api.get(f"/v1/audits/{audit_id}").get_json()
    assert doc["status"] == "queued" and doc["counts"]["done"] == 0 and doc["aggregates"] is None

    assert api.delete(f"/v1/audits/{audit_id}").status_code == 202
    assert api.delete(f"/v1/audits/{audit_id}").status_code == 409
    audit = lifecycle.start(runtime.db, audit_id)  # a batch message delivered after the cancel
    assert audit is not None and audit.status == "cancelled"
