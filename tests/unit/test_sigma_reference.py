"""Lantern's sigma against the original procedure (the authors' single-sentence, single-layer, one-draw-per-step
loop, scripts/sigma_reference.py), whose slow results are a fixture: tests/fixtures/sigma/reference_minilm.json.

The rule and the comparison live in scripts/sigma_agreement.py (which checks every fixture run and prints the
summary the README reports): Lantern's objective is never worse than the reference's by more than 1 %; where it is
lower by more than 2 standard errors of the paired difference, the lower objective decides; otherwise the kept words
agree (Jaccard ≥ 0.8) and, unless the objectives tie, the ranks agree (Spearman ≥ 0.9). This amends the issue's
"Spearman ≥ 0.9", which ranks near-equal σ: the original procedure itself, run twice with two seeds (the script's
``--replicate``), ranks layers 3 and 2 of sentence 1 with Spearman 0.86 and 0.89.

Here: the fast suite checks the cheapest run live; ``make test`` checks a diagonal subset, every layer on 4 of the
20 sentences and every sentence on 1-2 layers (fitted as jobs fit: all of a sentence's layers at once).
"""
from __future__ import annotations

import json

import pytest
import torch

from scripts.sigma_agreement import (
    FIXTURE,
    agreement,
    check,
    jaccard,
    lantern_sigma,
    mean,
    paired,
    sentence_index,
)
from scripts.sigma_reference import reference_sentences

DEPTH = ["embeddings", *(f"layer.{k}" for k in range(1, 7))]
STRIDE = 5  # the slow subset: runs whose sentence index − layer depth is a multiple of this


def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def diagonal(doc: dict) -> dict[int, list[dict]]:
    """The slow subset, by sentence index."""
    texts = reference_sentences(20)
    chosen: dict[int, list[dict]] = {}
    for run in doc["runs"]:
        i = sentence_index(texts, run)
        if (i - DEPTH.index(run["layer"])) % STRIDE == 0:
            chosen.setdefault(i, []).append(run)
    return chosen


def assert_passes(rows: list[dict]) -> None:
    for row in rows:
        print(f"{row['layer']} of {row['text'][:30]!r}: ours {row['objective']:.5f} reference "
              f"{row['reference_objective']:.5f} ± {row['se']:.5f}, Jaccard {row['jaccard']:.2f}, "
              f"Spearman {row['spearman']:.2f}: {row['verdict']}")
    assert all(row["ok"] for row in rows), [(r["layer"], r["verdict"], r["relative"]) for r in rows if not r["ok"]]


def test_lantern_matches_or_beats_the_original_procedure(minilm):
    """The cheapest run (a fit runs only as deep as its layer): layer.1 of the first sentence."""
    doc = fixture()
    run = next(r for r in doc["runs"] if r["layer"] == "layer.1" and r["text"] == reference_sentences(1)[0])
    assert_passes(check(minilm, doc, [run]))


def test_the_rule_fails_a_worse_sigma(minilm):
    """The rule can fail: σ with two kept words swapped for two dropped ones is worse and is refused."""
    doc = fixture()
    run = next(r for r in doc["runs"] if r["layer"] == "layer.1" and r["text"] == reference_sentences(1)[0])
    reference = torch.tensor(run["sigma"])
    worse = reference.clone()
    order = reference.argsort()
    worse[order[:2]], worse[order[-2:]] = reference[order[-2:]], reference[order[:2]]
    row = agreement(minilm, doc, run, worse)
    assert not row["ok"] and row["verdict"] == "worse", row


@pytest.mark.slow
@pytest.mark.parametrize("index", range(20))
def test_a_diagonal_subset_of_the_fixture(minilm, index):
    doc = fixture()
    runs = diagonal(doc).get(index)
    if not runs:
        pytest.skip(f"the fixture holds no run of sentence {index + 1} in the subset")
    rows = check(minilm, doc, runs)
    assert_passes(rows)
    close = [r for r in rows if r["verdict"] != "lower"]
    if close:
        assert mean([r["jaccard"] for r in close]) >= 0.8


@pytest.mark.slow
def test_lantern_is_as_good_as_the_best_of_two_seeds_of_the_original(minilm):
    """The original procedure is itself seed-dependent after its 3,000 steps (replicates: the run again with another
    seed): Lantern's objective must be within 1 % of the better of the two seeds' (the issue's bound, against the
    stronger of two references). Measured: 0.002 %, 0.006 % and 0.03 % above it on runs 0, 3 and 2."""
    doc = fixture()
    if not doc.get("replicates"):
        pytest.skip("no replicates in the fixture")
    for rep in doc["replicates"]:
        run = doc["runs"][rep["run"]]
        first, second = torch.tensor(run["sigma"]), torch.tensor(rep["sigma"])
        ours = lantern_sigma(minilm, doc, run["text"], [run["layer"]])[run["layer"]]
        best = min((first, second), key=lambda s: paired(minilm, doc, run, s, ours)[0])
        obj_best, obj_ours, se = paired(minilm, doc, run, best, ours)
        print(f"run {rep['run']} ({run['layer']}): the seeds' kept words Jaccard "
              f"{jaccard(first, second, doc['bound']):.2f}; best seed {obj_best:.5f}, Lantern {obj_ours:.5f} ± {se:.5f}")
        assert obj_ours <= obj_best * 1.01


def test_caching_the_state_leaves_the_reference_unchanged(minilm):
    """Fixture runs made with ``--cache-state`` (s computed once, not every step) are the original's bit for bit."""
    from scripts.sigma_reference import run_one

    doc = fixture()
    text = reference_sentences(1)[0]
    runs = [run_one(minilm, text, "layer.1", doc["lambda"], doc["bound"], 25, seed=0, cache_state=cached)
            for cached in (False, True)]
    assert runs[0]["sigma"] == runs[1]["sigma"] and runs[0]["best_step_loss"] == runs[1]["best_step_loss"]
