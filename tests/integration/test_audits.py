"""Audits in-process on both backends: validation before queueing, fan-out rows, batches run by the real runner,
every item accounted for, aggregates equal to a recomputation from the items, the report's safety."""
from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import select, update

from service.db import Audit, AuditItem, Job
from worker.report import STOP_WORDS, spearman

pytestmark = pytest.mark.postgres

ITEMS = [{"text": "A gripping, beautifully acted film.", "label": "positive"},
         {"text": "Dull, lifeless and far too long.", "label": "negative"},
         {"text": "=HYPERLINK(\"http://x\") <script>alert(1)</script> a joyous romp", "label": "positive"},
         {"text": "The plot is a mess and the jokes fall flat.", "label": "negative"},
         {"text": "It is the best film of the year.", "label": "positive"}]


def run_all(runtime, audit_id: str) -> None:
    """Play the workers' part: run every batch, then the finaliser, through the real runner."""
    from service.audits import release_finalizers
    from worker.runner import run_job

    with runtime.db.session() as s:
        batches = s.scalars(select(Job.id).where(Job.audit_id == audit_id, Job.kind == "audit_batch")).all()
    for job_id in batches:
        assert run_job(runtime, job_id, "w1") == "succeeded"
    release_finalizers(runtime.db, lambda job_id, queue: None)
    with runtime.db.session() as s:
        final = s.scalars(select(Job.id).where(Job.audit_id == audit_id, Job.kind == "audit_finalize")).one()
    assert run_job(runtime, final, "w1") == "succeeded"


def test_audit_end_to_end_in_process(api, runtime):
    resp = api.post("/v1/audits", json={"model": "minilm-rt", "corpus": {"items": ITEMS},
                                        "methods": ["gradient", "grad_x_input"], "batch_size": 2})
    assert resp.status_code == 202, resp.get_json()
    audit_id = resp.get_json()["id"]
    assert resp.headers["Location"] == f"/v1/audits/{audit_id}"
    with runtime.db.session() as s:
        assert s.scalar(select(Audit.total).where(Audit.id == audit_id)) == 5
        kinds = sorted(k for (k,) in s.execute(select(Job.kind).where(Job.audit_id == audit_id)))
    assert kinds == ["audit_batch"] * 3 + ["audit_finalize"]
    assert api.get("/v1/jobs").get_json()["items"] == []  # child work is not the caller's job list

    run_all(runtime, audit_id)
    doc = api.get(f"/v1/audits/{audit_id}").get_json()
    assert doc["status"] == "succeeded" and doc["counts"] == {"total": 5, "done": 5, "failed": 0}
    assert doc["progress"] == 1.0
    names = {a["name"] for a in doc["artifacts"]}
    assert {"report.html", "items.csv", "summary.json", "top-words-gradient.png"} <= names

    # the service's aggregates equal a recomputation from the per-item results
    with runtime.db.session() as s:
        items = s.scalars(select(AuditItem).where(AuditItem.audit_id == audit_id)
                          .order_by(AuditItem.position)).all()
        results = [i.result for i in items]
        labels = [i.label for i in items]
    agg = doc["aggregates"]["models"]["minilm-rt"]
    assert agg["accuracy"] == pytest.approx(
        sum(r["prediction"]["label"] == lab for r, lab in zip(results, labels, strict=True)) / 5)
    def real_words(r: dict) -> list[tuple[str, float]]:  # no [CLS]/[SEP], no punctuation
        return [(w.lower(), abs(x)) for w, x, g in zip(r["word_strings"], r["methods"]["gradient"]["word_scores"],
                                                       r["words"], strict=True)
                if any(c.isalnum() for c in w) and not all(r["special"][t] for t in g)]

    share: dict[str, float] = {}
    for r in results:
        pairs = real_words(r)
        total = sum(x for _, x in pairs)
        for w, x in pairs:
            share[w] = share.get(w, 0.0) + x / total
    top = agg["methods"]["gradient"]["top_words"]
    assert top[0]["word"] == max(share, key=share.get)
    assert all(t["total_share"] == pytest.approx(share[t["word"]]) for t in top)
    k = doc["request"]["top_k"]
    stop = [sum(w in STOP_WORDS for w, _ in sorted(real_words(r), key=lambda p: -p[1])[:k]) / k for r in results]
    assert not any(t["word"].startswith("[") for t in top)
    assert agg["methods"]["gradient"]["stop_word_share_top_k"] == pytest.approx(sum(stop) / 5)
    rho = [spearman(r["methods"]["gradient"]["word_scores"], r["methods"]["grad_x_input"]["word_scores"])
           for r in results]
    assert agg["agreement"]["gradient~grad_x_input"] == pytest.approx(sum(rho) / 5)

    # the report neutralises formulas in CSV and escapes user text in HTML
    csv_bytes = api.get(f"/v1/audits/{audit_id}/artifacts/items.csv").data
    rows = list(csv.DictReader(io.StringIO(csv_bytes.decode())))
    assert len(rows) == 5 and rows[2]["input"].startswith("'=HYPERLINK")
    page = api.get(f"/v1/audits/{audit_id}/artifacts/report.html").data.decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # our own scripts only:
    assert page.count("<script") == 2 and '<script type="application/json" class="lantern-data">' in page
    lines = [json.loads(line) for line in api.get(f"/v1/audits/{audit_id}/artifacts/attributions.jsonl").data.splitlines()]
    assert [line["methods"]["gradient"]["word_scores"] for line in lines] == \
        [r["methods"]["gradient"]["word_scores"] for r in results]
    summary = json.loads(api.get(f"/v1/audits/{audit_id}/artifacts/summary.json").data)
    assert summary["aggregates"] == doc["aggregates"]


def test_comparison_mode_runs_each_item_through_each_model(api, runtime):
    resp = api.post("/v1/audits", json={"models": ["minilm-rt", "minilm-rt-copy"], "corpus": {"items": ITEMS[:2]},
                                        "methods": ["gradient"]})
    assert resp.status_code == 422  # unknown second model: nothing created
    resp = api.post("/v1/audits", json={"models": ["minilm-rt"], "corpus": {"name": "rt-test"}, "sample": 3,
                                        "methods": ["gradient"], "seed": 1})
    audit_id = resp.get_json()["id"]
    with runtime.db.session() as s:
        positions = s.scalars(select(AuditItem.position).where(AuditItem.audit_id == audit_id)).all()
    assert len(positions) == 3 and positions == sorted(positions)


def test_cancel_stops_batches(api, runtime):
    audit_id = api.post("/v1/audits", json={"model": "minilm-rt", "corpus": {"items": ITEMS},
                                            "methods": ["gradient"], "batch_size": 1}).get_json()["id"]
    doc = api.delete(f"/v1/audits/{audit_id}").get_json()
    assert doc["status"] == "cancelled"
    with runtime.db.session() as s:
        assert set(s.scalars(select(Job.status).where(Job.audit_id == audit_id))) == {"cancelled"}
    assert api.delete(f"/v1/audits/{audit_id}").status_code == 409


BAD_FILES = [
    ("empty.csv", b"", "empty"),
    ("wrong.csv", b"sentence,label\nhello,positive\n", "no 'text' column"),
    ("latin1.csv", "text\ncaf\xe9 cr\xe8me\n".encode("latin-1"), "not UTF-8"),
    ("huge.jsonl", json.dumps({"text": "x" * 10_000_000}).encode(), "limit"),
    ("bad.jsonl", b'{"text": "ok"}\n{oops\n', "line 2"),
    ("empty-text.csv", b"text,label\n ,positive\n", "empty"),
]


@pytest.mark.parametrize("filename,data,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_corpus_files_are_refused_before_anything_is_queued(api, runtime, filename, data, message):
    resp = api.post("/v1/audits/uploads", data={"file": (io.BytesIO(data), filename)},
                    content_type="multipart/form-data")
    assert resp.status_code == 422 and resp.content_type == "application/problem+json"
    assert message in json.dumps(resp.get_json())


def test_too_many_items_and_good_upload(api, runtime):
    from dataclasses import replace

    runtime.settings = replace(runtime.settings, max_audit_items=10)
    many = "\n".join(json.dumps({"text": f"item {i}"}) for i in range(1_000)).encode()
    resp = api.post("/v1/audits/uploads", data={"file": (io.BytesIO(many), "many.jsonl")},
                    content_type="multipart/form-data")
    assert resp.status_code == 422 and "more than 10" in resp.get_json()["detail"]
    inline = api.post("/v1/audits", json={"model": "minilm-rt", "methods": ["gradient"],
                                          "corpus": {"items": [{"text": "x"}] * 11}})
    assert inline.status_code == 422
    good = b"text,label\nA fine film.,positive\nA bad film.,negative\n"
    up = api.post("/v1/audits/uploads", data={"file": (io.BytesIO(good), "ok.csv")},
                  content_type="multipart/form-data")
    assert up.status_code == 201 and up.get_json()["items"] == 2
    resp = api.post("/v1/audits", json={"model": "minilm-rt", "methods": ["gradient"],
                                        "corpus": {"upload": up.get_json()["upload"]}})
    assert resp.status_code == 202 and resp.get_json()["counts"]["total"] == 2
    with runtime.db.session() as s:
        assert s.scalar(select(Audit).where(Audit.id == resp.get_json()["id"])).total == 2


def test_a_bad_item_fails_alone(api, runtime):
    """One item the model cannot take (over the token limit) fails with its reason; its batch-mates succeed.
    Submit refuses such an item now (test_hardening_worker), so it is planted in the stored row afterwards."""
    from sqlalchemy import update

    items = [{"text": "A fine film."}, {"text": "A good film."}, {"text": "A dull film."}]
    audit_id = api.post("/v1/audits", json={"model": "minilm-rt", "corpus": {"items": items},
                                            "methods": ["gradient"], "batch_size": 3}).get_json()["id"]
    with runtime.db.session() as s:
        s.execute(update(AuditItem).where(AuditItem.audit_id == audit_id, AuditItem.position == 1)
                  .values(input={"text": "word " * 600}))
    run_all(runtime, audit_id)
    doc = api.get(f"/v1/audits/{audit_id}").get_json()
    assert doc["status"] == "succeeded" and doc["counts"] == {"total": 3, "done": 2, "failed": 1}
    with runtime.db.session() as s:
        bad = s.scalars(select(AuditItem).where(AuditItem.audit_id == audit_id, AuditItem.position == 1)).one()
    assert bad.status == "failed" and bad.error["status"] == 422


def test_an_audit_whose_finaliser_is_dead_lettered_ends_failed(api, runtime):
    """Its report could not be made: the audit says failed with the finaliser's error, not running for ever."""
    from datetime import timedelta

    from service import jobs
    from service.audit_lifecycle import fail_abandoned, release_finalizers
    from service.db import utcnow
    from worker.runner import run_job

    resp = api.post("/v1/audits", json={"model": "cnn-rt", "corpus": {"items": ITEMS[:2]}, "methods": ["gradient"]})
    audit_id = resp.get_json()["id"]
    with runtime.db.session() as s:
        batches = s.scalars(select(Job.id).where(Job.audit_id == audit_id, Job.kind == "audit_batch")).all()
    assert all(run_job(runtime, job_id, "w1") == "succeeded" for job_id in batches)
    release_finalizers(runtime.db, lambda job_id, queue: None)
    with runtime.db.session() as s:
        final = s.scalars(select(Job.id).where(Job.audit_id == audit_id, Job.kind == "audit_finalize")).one()
    for attempt in range(runtime.settings.max_attempts):  # its worker dies every time
        assert jobs.claim(runtime.db, final, f"dying-{attempt}", runtime.settings, "cpu")
        with runtime.db.session() as s:
            s.execute(update(Job).where(Job.id == final).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    jobs.reap(runtime.db, runtime.settings, lambda job_id, queue: None)
    assert api.get(f"/v1/audits/{audit_id}").get_json()["status"] == "running"
    assert fail_abandoned(runtime.db) >= 1
    doc = api.get(f"/v1/audits/{audit_id}").get_json()
    assert doc["status"] == "failed" and "dead-lettered" in doc["error"]["title"].lower() + doc["error"]["detail"]
    fail_abandoned(runtime.db)  # a second pass leaves it as it is
    assert api.get(f"/v1/audits/{audit_id}").get_json()["finished_at"] == doc["finished_at"]
