"""explain_batch equals explain item by item: for methods with a batched pass (gradient, integrated gradients) and
one without."""
from __future__ import annotations

import pytest

from worker.methods import explain, explain_batch
from worker.models import load_model

TEXTS = [{"text": "A gripping, beautifully acted film."}, {"text": "Dull."},
         {"text": "The plot is an unbelievably tangled mess, yet the lead is wonderful."}]


@pytest.mark.parametrize("model", ["minilm-rt", "bilstm-rt"])
def test_batch_equals_items(model):
    adapter = load_model(model)
    batch = explain_batch(adapter, TEXTS, ["gradient", "grad_x_input"], figures=False)
    for inputs, got in zip(TEXTS, batch, strict=True):
        want = explain(adapter, inputs, ["gradient", "grad_x_input"], figures=False).result
        assert got.result["tokens"] == want["tokens"]
        assert got.result["prediction"]["label"] == want["prediction"]["label"]
        for method in ("gradient", "grad_x_input"):
            assert got.result["methods"][method]["scores"] == pytest.approx(
                want["methods"][method]["scores"], rel=1e-4, abs=1e-6)
            for key in ("comprehensiveness", "sufficiency", "lift"):
                assert got.result["methods"][method]["faithfulness"][key] == pytest.approx(
                    want["methods"][method]["faithfulness"][key], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("baseline", ["zero", "mask"])
def test_integrated_gradients_batch_equals_items(baseline):
    """Items of different lengths share padded passes, and a small internal batch splits them in several groups
    and passes — the scores and the completeness gaps are each item's own."""
    import torch

    from worker.methods.base import Target
    from worker.methods.integrated_gradients import run, run_batch

    adapter = load_model("minilm-rt").load()
    texts = [{"text": t} for t in ("a fine film .", "a dull film .", "a bad film .", "Dull.", "a gripping, long film")]
    enc = adapter.encode(texts)
    assert len({len(t) for t in enc.tokens[:3]}) == 1 and len({len(t) for t in enc.tokens}) > 1
    target = Target(torch.tensor([1, 0, 0, 1, 1]))
    params = {"baseline": baseline, "steps": 8, "method": "gausslegendre", "internal_batch_size": 4}
    batch = run_batch(adapter, enc, target, params)
    for i, got in enumerate(batch):
        want = run(adapter, enc.item(i), Target(target.index[i : i + 1]), params)
        assert got.json["scores"] == pytest.approx(want.json["scores"], rel=1e-4, abs=1e-6)
        assert got.json["delta"] == pytest.approx(want.json["delta"], rel=1e-3, abs=1e-5)
        assert len(got.json["scores"]) == len(enc.tokens[i])


def test_batch_figures_are_per_item():
    adapter = load_model("minilm-rt")
    batch = explain_batch(adapter, TEXTS[:2], ["gradient"])
    assert all(ex.figures["gradient.png"][:8] == b"\x89PNG\r\n\x1a\n" for ex in batch)
    assert batch[0].figures["gradient.png"] != batch[1].figures["gradient.png"]
