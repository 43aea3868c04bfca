"""explain_batch equals explain item by item: for a method with a batched pass (gradient) and one without."""
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


def test_batch_figures_are_per_item():
    adapter = load_model("minilm-rt")
    batch = explain_batch(adapter, TEXTS[:2], ["gradient"])
    assert all(ex.figures["gradient.png"][:8] == b"\x89PNG\r\n\x1a\n" for ex in batch)
    assert batch[0].figures["gradient.png"] != batch[1].figures["gradient.png"]
