"""The gradient/perturbation/attention family on the word-level zoo models (CNN, Transformer): removal masks a word
as <unk>, faithfulness is attached, and the transformer views apply."""
from __future__ import annotations

import pytest
import torch

from worker.methods import explain
from worker.models import load_model, zoo_names

TEXT = "a gorgeous , moving and wonderfully acted film ."
pytestmark = pytest.mark.skipif(not {"cnn-rt", "transformer-rt"} <= set(zoo_names()),
                                reason="the word-level zoo bundles are not shipped")


def test_cnn_occlusion_masks_words_as_unk():
    cnn = load_model("cnn-rt").load()
    ex = explain(cnn, {"text": TEXT}, ["occlusion", "integrated_gradients"],
                 params={"integrated_gradients": {"steps": 8}})
    part = ex.result["methods"]["occlusion"]
    enc = cnn.encode({"text": TEXT})
    t = 3  # "moving"
    ids = enc.input_ids.clone()
    ids[0, t] = cnn.vocab.id("<unk>")
    masked = type(enc)(**{**enc.__dict__, "input_ids": ids})
    with torch.no_grad():
        full = cnn.forward(cnn.embed(enc), enc).logits[0]
        gone = cnn.forward(cnn.embed(masked), masked).logits[0]
    label = int(full.argmax())
    assert part["scores"][t] == pytest.approx(float(full[label] - gone[label]), abs=1e-5)
    for name in ("occlusion", "integrated_gradients"):
        assert set(ex.result["methods"][name]["faithfulness"]["random"]) == {"comprehensiveness", "sufficiency"}


def test_transformer_rt_attention_views():
    model = load_model("transformer-rt").load()
    ex = explain(model, {"text": TEXT}, ["attention", "attention_rollout"])
    attention = ex.result["methods"]["attention"]
    assert attention["view"] == "transformer" and len(attention["layers"]) == 3
    rows = ex.tensors["attention"]["attention"].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    assert sum(ex.result["methods"]["attention_rollout"]["scores"]) == pytest.approx(1.0, abs=1e-5)
