"""An audit's `concepts` reach its items' sigma (r_{i,c} per word and layer) and its aggregates (corpus MI and r per
layer, recomputed from the items), with the r_{i,c} chart among the artifacts."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from service.db import AuditItem
from tests.integration.test_audits import run_all
from worker.report import sigma_layers

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CONCEPTS = {"emotion": ["sad", "happy"], "objects": ["table", "car"]}


def test_audit_concepts_reach_items_and_aggregates(api, runtime):
    resp = api.post("/v1/audits", json={
        "model": "transformer-rt", "corpus": {"items": [{"text": "a sad film"}, {"text": "a fine dull movie"}]},
        "methods": ["sigma"], "layers": ["layer.1", "layer.3"], "concepts": CONCEPTS,
        "params": {"sigma": {"max_steps": 15, "eval_samples": 16}}})
    assert resp.status_code == 202, resp.get_json()
    audit_id = resp.get_json()["id"]
    run_all(runtime, audit_id)
    doc = api.get(f"/v1/audits/{audit_id}").get_json()
    assert doc["status"] == "succeeded", doc
    assert "concepts-per-layer.png" in {a["name"] for a in doc["artifacts"]}
    with runtime.db.session() as s:
        results = [i.result for i in s.scalars(select(AuditItem).where(AuditItem.audit_id == audit_id))]
    for result in results:
        assert set(result["methods"]["sigma"]["layers"]["layer.1"]["r"]) == set(CONCEPTS)
    aggregates = doc["aggregates"]["models"]["transformer-rt"]["sigma"]
    assert aggregates == sigma_layers(results, list(CONCEPTS))  # recomputed from the items
    assert aggregates["layer.1"]["corpus_information"]["sentences"] == 2
