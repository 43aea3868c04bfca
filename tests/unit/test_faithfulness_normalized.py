"""Normalised AOPC (worker/methods/aopc_bounds.py) on a model whose best and worst rankings are known: p(y) =
sigmoid(Σ weights of the kept tokens). Masking the heaviest tokens first lowers p(y) most at every k, so the ranking
by weight is the best for comprehensiveness and for sufficiency, and the reverse ranking is the worst."""
from __future__ import annotations

import pytest
import torch

from worker.methods import aopc_bounds
from worker.methods.aopc_bounds import BoundsCache, normalized, search
from worker.methods.faithfulness import BINS, faithfulness, top_k
from worker.models.base import Adapter, Encoding, Trace

WEIGHTS = [0.0, 2.0, -1.0, 0.5, 3.0, -0.2, 1.2, 0.1, -2.5, 0.8, 0.3]  # id 0 is the mask token: weight 0


class AdditiveAdapter(Adapter):
    """logit(pos) = Σ over the non-special tokens of weight[id]; logit(neg) = 0. Tokens: [CLS] 1 … n [SEP]."""

    def __init__(self):
        self.name, self.revision, self.labels = "additive", "0" * 64, ["neg", "pos"]
        self.layer_names = ["embeddings", "output"]
        self.mask_token_id = 0
        self.weights = torch.tensor(WEIGHTS, dtype=torch.float64)

    def encode(self, inputs) -> Encoding:
        n = len(WEIGHTS) - 1
        t = n + 2
        ids = torch.tensor([[0, *range(1, n + 1), 0]])
        special = [True] + [False] * n + [True]
        return Encoding(input_ids=ids, attention_mask=torch.ones(1, t, dtype=torch.long),
                        tokens=[["[CLS]", *(f"w{i}" for i in range(1, n + 1)), "[SEP]"]], special=[special],
                        words=[[[i] for i in range(t)]], offsets=[[(0, 0)] * t], segments=[[0] * t],
                        inputs=[{"text": "x"}])

    def embed(self, encoding: Encoding) -> torch.Tensor:
        return self.weights[encoding.input_ids].unsqueeze(-1)

    def forward(self, x, encoding, capture=(), upto=None) -> Trace:
        pos = x[..., 0].sum(1)
        return Trace(logits=torch.stack([torch.zeros_like(pos), pos], -1))


def aopc_of(order: list[int], keep: bool) -> float:
    """AOPC of a ranking of the tokens 1 … n by hand: p(x) − p(x with the top k masked / only the top k kept)."""
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    n = len(WEIGHTS) - 1
    full = torch.sigmoid(w.sum())
    drops = []
    for b in BINS:
        top = order[:top_k(b, n)]
        kept = w[top].sum() if keep else w.sum() - w[top].sum()
        drops.append(float(full - torch.sigmoid(kept)))
    return sum(drops) / len(drops)


BY_WEIGHT = sorted(range(1, len(WEIGHTS)), key=lambda i: -WEIGHTS[i])


@pytest.mark.parametrize("budget", [aopc_bounds.BUDGET, 10], ids=["greedy", "single"])
def test_the_bounds_are_the_known_best_and_worst_rankings(monkeypatch, budget):
    monkeypatch.setattr(aopc_bounds, "BUDGET", budget)
    adapter = AdditiveAdapter()
    enc = adapter.encode({"text": "x"})
    n = len(WEIGHTS) - 1
    ks = [top_k(b, n) for b in BINS]
    full = float(torch.sigmoid(torch.tensor(WEIGHTS).sum()))
    bounds = search(adapter, enc, torch.tensor([1]), ks, full)
    worst = BY_WEIGHT[::-1]
    assert bounds.comprehensiveness == pytest.approx((aopc_of(worst, False), aopc_of(BY_WEIGHT, False)), abs=1e-7)
    assert bounds.sufficiency == pytest.approx((aopc_of(BY_WEIGHT, True), aopc_of(worst, True)), abs=1e-7)
    assert bounds.search == ("greedy" if budget > 10 else "single")
    expected_rows = 4 * sum(n - s for s in range(max(ks))) if budget > 10 else 2 * (n + 2 * len(ks))
    assert bounds.rows == expected_rows


@pytest.mark.parametrize("sign,expected", [(1.0, 1.0), (-1.0, 0.0)], ids=["best", "worst"])
def test_normalized_is_one_for_the_best_ranking_and_zero_for_the_worst(sign, expected):
    adapter = AdditiveAdapter()
    enc = adapter.encode({"text": "x"})
    scores = [0.0] + [sign * w for w in WEIGHTS[1:]] + [0.0]
    doc = faithfulness(adapter, enc, scores, torch.tensor([1]), seed=0)
    norm = doc["normalized"]
    assert norm["comprehensiveness"] == pytest.approx(expected, abs=1e-9)
    assert norm["sufficiency"] == pytest.approx(expected, abs=1e-9)
    assert 0.0 < norm["random"]["comprehensiveness"] < 1.0 and 0.0 < norm["random"]["sufficiency"] < 1.0
    assert norm["bounds"]["comprehensiveness"][1] == pytest.approx(aopc_of(BY_WEIGHT, False), abs=1e-7)


def test_a_ranking_in_between_is_placed_linearly():
    bounds = aopc_bounds.Bounds((0.1, 0.5), (0.0, 0.4), rows=1, search="greedy")
    doc = normalized(bounds, 0.2, 0.1, {"comprehensiveness": 0.3, "sufficiency": 0.2})
    assert doc["comprehensiveness"] == pytest.approx(0.25) and doc["sufficiency"] == pytest.approx(0.75)
    assert doc["random"] == pytest.approx({"comprehensiveness": 0.5, "sufficiency": 0.5})
    flat = normalized(aopc_bounds.Bounds((0.2, 0.2), (0.1, 0.1), 1, "greedy"), 0.2, 0.1,
                      {"comprehensiveness": 0.2, "sufficiency": 0.1})
    assert flat["comprehensiveness"] is None and flat["sufficiency"] is None


def test_one_search_per_input_is_shared(monkeypatch):
    calls = []
    real = aopc_bounds.search
    monkeypatch.setattr(aopc_bounds, "search", lambda *a: calls.append(1) or real(*a))
    adapter, cache = AdditiveAdapter(), BoundsCache(size=2)
    enc = adapter.encode({"text": "x"})
    for _ in range(3):
        cache.get(adapter, enc, torch.tensor([1]), [1, 2], 0.9)
    assert len(calls) == 1
