"""A 200-sentence audit on the production shape (gunicorn API, two Celery worker processes, PostgreSQL, Redis,
S3): one worker is killed mid-audit and another started; every item is accounted for exactly once and items
finished before the kill are not redone."""
from __future__ import annotations

import os
import signal
from datetime import UTC

import pytest
from sqlalchemy import func, select

from service.db import AuditItem, Job, utcnow
from tests.helpers import production_stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, tmp_path_factory):
    with production_stack(pg_url, redis_url, tmp_path_factory.mktemp("audit-stack")) as st:
        yield st


def test_an_audit_survives_a_killed_worker(stack, tmp_path):
    doc = stack.client.audit({"model": "minilm-rt", "corpus": {"name": "rt-test"}, "sample": 200, "seed": 3,
                              "methods": ["gradient"], "batch_size": 8})
    audit_id = doc["id"]
    assert doc["counts"]["total"] == 200

    def done_items() -> int:
        with stack.db.session() as s:
            return s.scalar(select(func.count()).select_from(AuditItem).where(
                AuditItem.audit_id == audit_id, AuditItem.status == "done"))

    wait_for(lambda: done_items() >= 40, 300, "40 items done", every=0.2)

    def fresh_batch_owner() -> str | None:
        """The lease owner of a batch that started under a second ago: its 8 items (seconds of work, written
        together at the end) are still running when the kill lands (an older batch could end first: a flake)."""
        with stack.db.session() as s:
            running = s.execute(select(Job.lease_owner, Job.started_at).where(
                Job.audit_id == audit_id, Job.kind == "audit_batch", Job.status == "running")).all()
        now = utcnow()
        return next((owner for owner, started in running if owner and started and
                     (now - started.replace(tzinfo=started.tzinfo or UTC)).total_seconds() < 1.0), None)

    owner = wait_for(fresh_batch_owner, 120, "a batch that just started", every=0.05)
    victim = next(w for w in stack.workers if any(f":{pid}:" in owner for pid in _family(w.pid)))
    done_before = {p for (p,) in _done_positions(stack, audit_id)}
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    stack.workers.append(stack.spawn("worker", name="worker-restarted"))

    final = stack.client.wait_audit(audit_id, timeout=900)
    assert final["status"] == "succeeded", (final, stack.logs())
    assert final["counts"] == {"total": 200, "done": 200, "failed": 0}
    with stack.db.session() as s:
        rows = s.execute(select(AuditItem.position, AuditItem.attempts).where(AuditItem.audit_id == audit_id)).all()
        batch_attempts = s.scalars(select(Job.attempts).where(Job.audit_id == audit_id,
                                                              Job.kind == "audit_batch")).all()
    assert len(rows) == 200 and len({p for p, _ in rows}) == 200  # each item once
    assert all(attempts == 1 for _, attempts in rows)  # nothing redone, not even in the re-run batch
    assert max(batch_attempts) == 2  # the killed worker's batch was resumed by another worker
    assert done_before <= {p for p, _ in rows}
    assert {"report.html", "items.csv", "summary.json", "top-words-gradient.png"} <= {
        a["name"] for a in final["artifacts"]}
    agg = final["aggregates"]["models"]["minilm-rt"]
    assert agg["items"] == 200 and 0.6 < agg["accuracy"] <= 1.0
    report = stack.client.download_url(f"/v1/audits/{audit_id}/artifacts/report.html", tmp_path / "report.html")
    assert b"Lantern audit" in report.read_bytes()


def _done_positions(stack, audit_id):
    with stack.db.session() as s:
        return s.execute(select(AuditItem.position).where(AuditItem.audit_id == audit_id,
                                                          AuditItem.status == "done")).all()


def _family(pid: int) -> set[int]:
    """A worker's main process and its pool children."""
    out = {pid}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry))
    return out
