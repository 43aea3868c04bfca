"""`lrp` on ESIM: the rule-modified forward gives ESIM's own logits (float64, padded pairs of unequal lengths), the
relevance of a pair does not depend on the other pairs of its batch, and esim-50 through ``explain``. Each rule is
checked written out on its own model: the LSTM rules in test_lrp_lstm.py, the alignment's product and softmax rules
in test_lrp_attention.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.methods import explain
from worker.methods.base import Target
from worker.models import load_model
from worker.models.esim import ESIM, sentence_positions
from worker.models.relevance import input_relevance


def tiny_esim() -> ESIM:
    torch.manual_seed(0)
    module = ESIM(vocab_size=30, embedding_dim=4, hidden_size=3).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.7)
    return module


SEGMENTS = [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]


def test_the_rule_forward_gives_esim_logits():
    module = tiny_esim()
    x = torch.randn(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    places = sentence_positions(SEGMENTS)
    expected = dict(module.steps(x, places["premise"], places["hypothesis"]))["output"]
    with torch.no_grad():
        got = module.lrp_logits(x, places["premise"], places["hypothesis"], 1e-9)
    np.testing.assert_allclose(got.numpy(), expected.detach().numpy(), rtol=1e-10)


def test_a_pair_alone_and_in_a_batch():
    module = tiny_esim()
    x = torch.randn(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = Target(torch.tensor([1, 2]), "logit")

    def relevance(x, segments, target):
        places = sentence_positions(segments)
        return input_relevance(x, lambda e: module.lrp_logits(e, places["premise"], places["hypothesis"], 1e-9),
                               target, 1e-9)

    batched, start, _ = relevance(x, SEGMENTS, target)
    alone, alone_start, _ = relevance(x[1:], SEGMENTS[1:], Target(torch.tensor([2]), "logit"))
    np.testing.assert_allclose(batched[1].numpy(), alone[0].numpy(), rtol=1e-8, atol=1e-12)
    assert float(start[1]) == pytest.approx(float(alone_start[0]))


def test_esim_50_through_explain():
    adapter = load_model("esim-50", device="cpu").load()
    pair = {"premise": "a man is playing a guitar on stage .", "hypothesis": "a person performs music ."}
    result = explain(adapter, pair, ["lrp"]).result
    lrp = result["methods"]["lrp"]
    assert len(lrp["scores"]) == len(result["tokens"])
    assert lrp["absorbed"] == pytest.approx(lrp["output"] - sum(lrp["scores"]), abs=1e-4)
    assert all(np.isfinite(lrp["scores"]))
