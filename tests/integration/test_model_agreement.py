"""Agreement between models that tokenise differently (minilm-rt's word pieces, bilstm-rt's words), through the real
stack: an audit over both models reports model_agreement on word scores, and so does a job with compare_with; both
equal a recomputation here from the stored per-item results, aligning the two models' words character by character."""
from __future__ import annotations

import statistics

import pytest
from sqlalchemy import select

from service.db import AuditItem, Job
from worker.report import spearman

pytestmark = pytest.mark.postgres

ITEMS = [{"text": "It isn't the director's best (but it's fun)."}, {"text": "Dull and far too long; don't."}]


def char_owners(result: dict, method: str) -> tuple[list[int], list[float]]:
    """For each non-space character of the text's non-special words: the word it belongs to, and the word scores."""
    owners, scores = [], []
    for w, (text, score) in enumerate(zip(result["word_strings"], result["methods"][method]["word_scores"],
                                          strict=True)):
        if all(result["special"][t] for t in result["words"][w]):
            continue
        scores.append(score)
        owners += [len(scores) - 1] * len("".join(text.split()))
    return owners, scores


def expected_rho(a: dict, b: dict, method: str) -> float | None:
    """Spearman over the spans of characters that no word boundary of either model splits."""
    (oa, sa), (ob, sb) = char_owners(a, method), char_owners(b, method)
    assert len(oa) == len(ob)
    spans: list[tuple[set[int], set[int]]] = []
    for i in range(len(oa)):
        if i == 0 or (oa[i] != oa[i - 1] and ob[i] != ob[i - 1]):
            spans.append((set(), set()))
        spans[-1][0].add(oa[i])
        spans[-1][1].add(ob[i])
    return spearman([sum(sa[w] for w in s) for s, _ in spans], [sum(sb[w] for w in s) for _, s in spans])


@pytest.mark.parametrize("backend", ["postgres"])
def test_an_audit_over_two_tokenisers_reports_their_agreement(api, runtime):
    from tests.integration.test_audits import run_all

    resp = api.post("/v1/audits", json={"models": ["minilm-rt", "bilstm-rt"], "corpus": {"items": ITEMS},
                                        "methods": ["gradient", "grad_x_input"], "batch_size": 2})
    assert resp.status_code == 202, resp.get_json()
    audit_id = resp.get_json()["id"]
    run_all(runtime, audit_id)
    doc = api.get(f"/v1/audits/{audit_id}").get_json()
    assert doc["status"] == "succeeded"
    with runtime.db.session() as s:
        items = s.scalars(select(AuditItem).where(AuditItem.audit_id == audit_id)).all()
        by_model = {m: {i.position: i.result for i in items if i.model == m} for m in ("minilm-rt", "bilstm-rt")}
    first = by_model["minilm-rt"][min(by_model["minilm-rt"])]
    assert first["word_strings"] != by_model["bilstm-rt"][min(by_model["bilstm-rt"])]["word_strings"]
    agreement = doc["aggregates"]["model_agreement"]
    for method in ("gradient", "grad_x_input"):
        rhos = [expected_rho(r, by_model["bilstm-rt"][p], method) for p, r in by_model["minilm-rt"].items()]
        assert agreement[f"minilm-rt~bilstm-rt:{method}"] == pytest.approx(statistics.fmean(rhos), abs=1e-9)


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_job_compared_with_another_tokeniser_reports_their_agreement(api, runtime):
    from worker.runner import run_job

    resp = api.post("/v1/jobs", json={"model": "minilm-rt", "compare_with": ["bilstm-rt"], "inputs": ITEMS[0],
                                      "methods": ["gradient", "grad_x_input"]})
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    assert run_job(runtime, job_id, "w1") == "succeeded"
    doc = api.get(f"/v1/jobs/{job_id}").get_json()
    ours, theirs = doc["result"], doc["compare"]["bilstm-rt"]
    for method in ("gradient", "grad_x_input"):
        rho = doc["model_agreement"][f"minilm-rt~bilstm-rt:{method}"]
        assert rho is not None and rho == pytest.approx(expected_rho(ours, theirs, method), abs=1e-9)
    with runtime.db.session() as s:
        assert s.get(Job, job_id).result["model_agreement"] == doc["model_agreement"]
