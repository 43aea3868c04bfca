"""attention (transformer view), attention_rollout and activations against transformers' own outputs and numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.methods import explain, registry
from worker.models import InputError

TEXT = 'the critic called it "a triumph" , but the audience left early .'
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reference(minilm, raw_encoder):
    enc = minilm.encode({"text": TEXT})
    with torch.no_grad():
        out = raw_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_attentions=True,
                          output_hidden_states=True)
    return enc, out


def test_transformer_attention_view(minilm, reference):
    enc, out = reference
    ex = explain(minilm, {"text": TEXT}, ["attention"], params={"attention": {"figure_layer": "attention.2"}})
    part = ex.result["methods"]["attention"]
    T = len(enc.tokens[0])
    assert part["view"] == "transformer" and part["shape"] == [6, 12, T, T] and part["heads"] == 12
    expected = torch.stack([a[0] for a in out.attentions])
    torch.testing.assert_close(ex.tensors["attention"]["attention"], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(part["head_average"]), expected.mean(1), rtol=0, atol=1e-5)
    assert "faithfulness" not in part and "scores" not in part
    assert ex.figures["attention.png"].startswith(PNG) and ex.figures["attention-heads.png"].startswith(PNG)
    with pytest.raises(InputError, match="figure_layer"):
        explain(minilm, {"text": TEXT}, ["attention"], params={"attention": {"figure_layer": "layer.2"}})


def hand_rollout(attentions, residual=0.5):
    T = attentions[0].shape[-1]
    joint = np.eye(T)
    for a in attentions:
        layer = residual * np.eye(T) + (1 - residual) * a[0].double().numpy().mean(0)
        layer = layer / layer.sum(-1, keepdims=True)
        joint = layer @ joint
    return joint


@pytest.mark.parametrize("query", ["mean", "first"])
def test_attention_rollout_equals_hand_computation(minilm, reference, query):
    enc, out = reference
    ex = explain(minilm, {"text": TEXT}, ["attention_rollout"], params={"attention_rollout": {"query": query}})
    joint = hand_rollout(out.attentions)
    expected = joint[0] if query == "first" else joint.mean(0)
    part = ex.result["methods"]["attention_rollout"]
    assert part["scores"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert sum(part["scores"]) == pytest.approx(1.0, abs=1e-6)
    assert "faithfulness" not in part  # headless model


def test_rollout_with_full_residual_is_the_identity(minilm):
    ex = explain(minilm, {"text": TEXT}, ["attention_rollout"], params={"attention_rollout": {"residual": 1.0}})
    T = len(ex.result["tokens"])
    torch.testing.assert_close(ex.tensors["attention_rollout"]["rollout"], torch.eye(T))


def test_rollout_on_a_headed_model_gets_faithfulness(minilm_rt):
    ex = explain(minilm_rt, {"text": TEXT}, ["attention_rollout"])
    assert "lift" in ex.result["methods"]["attention_rollout"]["faithfulness"]


def test_activations_top_neurons_by_variance(minilm, reference):
    enc, out = reference
    ex = explain(minilm, {"text": TEXT}, ["activations"], params={"activations": {"layer": "layer.3", "top": 5}})
    part = ex.result["methods"]["activations"]
    states = out.hidden_states[3][0].double().numpy()
    inner = states[1:-1]
    variance = inner.var(0)
    assert part["neurons"] == list(np.argsort(-variance, kind="stable")[:5])
    assert np.allclose(np.array(part["traces"]), states[:, part["neurons"]].T, atol=1e-5)
    assert ex.figures["activations.png"].startswith(PNG)


def test_activations_quote_cell_search(minilm, reference):
    enc, out = reference
    params = {"activations": {"rank_by": "correlation", "pattern_regex": '"[^"]*"', "top": 3}}
    ex = explain(minilm, {"text": TEXT}, ["activations"], params=params)
    part = ex.result["methods"]["activations"]
    words = ex.result["word_strings"]
    marked = [w for w, group in zip(words, ex.result["words"], strict=True) if part["pattern"][group[0]] == 1.0]
    assert marked == ['"', "a", "triumph", '"']
    states = out.hidden_states[6][0].double().numpy()[1:-1]
    pattern = np.array(part["pattern"][1:-1])
    corr = np.array([np.corrcoef(states[:, j], pattern)[0, 1] for j in range(states.shape[1])])
    assert part["neurons"] == list(np.argsort(-np.abs(corr), kind="stable")[:3])
    assert part["correlation"] == pytest.approx(corr[part["neurons"]].tolist(), abs=1e-5)
    # one value per word, as given
    n = len(words)
    by_words = explain(minilm, {"text": TEXT}, ["activations"], params={"activations": {
        "rank_by": "correlation", "pattern": [float(w == "triumph") for w in words]}})
    assert by_words.result["methods"]["activations"]["neurons"][0] >= 0
    for bad, match in (({"rank_by": "correlation"}, "pattern"), ({"rank_by": "correlation", "pattern": [1.0] * n},
                                                                  "constant"),
                       ({"rank_by": "correlation", "pattern": [1.0]}, "words"), ({"layer": "pool"}, "per-token")):
        with pytest.raises(InputError, match=match):
            explain(minilm, {"text": TEXT}, ["activations"], params={"activations": bad})


def test_methods_listed_for_headless_models(minilm):
    names = minilm.describe()["methods"]
    assert {"attention", "attention_rollout", "activations"} <= set(names)
    assert "integrated_gradients" not in names
    assert registry()["attention_rollout"].needs_head is False
