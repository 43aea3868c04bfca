"""Word attributes (Guan Eq. 8–9) through the sigma method's ``concepts`` param, recomputed here by brute force
from the model's embedding table (numpy, float64) and the result's own word σ; known answers: a concept made of the
word itself gives r = 0 and A_c = A_i; a word of a concept that is far from it gives r > 0; specials get null."""
from __future__ import annotations

import marshmallow as ma
import numpy as np
import pytest

from worker.methods import explain, registry
from worker.models import load_model

QUICK = {"max_steps": 20, "eval_samples": 16}
CONCEPTS = {"itself": ["sad"], "emotion": ["happy", "angry", "sorrowful"], "objects": ["table", "car"]}


@pytest.fixture(scope="module")
def transformer_rt():
    return load_model("transformer-rt", device="cpu").load()


def test_attributes_per_layer_against_brute_force(transformer_rt):
    model = transformer_rt
    out = explain(model, {"text": "a sad film"}, ["sigma"], layers=["embeddings", "layer.1", "layer.3"],
                  params={"sigma": {**QUICK, "concepts": CONCEPTS}}, seed=1)
    part = out.result["methods"]["sigma"]
    table = model.module.embeddings.weight.detach().double().numpy()
    population = np.delete(table, 0, axis=0)  # every row but padding: the random words
    words = out.result["word_strings"]
    assert "sad" in words and "film" in words
    for name, entry in part["layers"].items():
        assert set(entry["r"]) == set(entry["A_c"]) == set(CONCEPTS)
        for w, group in enumerate(out.result["words"]):
            if all(out.result["special"][t] for t in group):
                assert entry["A_i"][w] is None and entry["r"]["emotion"][w] is None
                continue
            x = np.mean([table[model.vocab.id(out.result["tokens"][t])] for t in group], axis=0)
            var2 = 2 * entry["word_sigma"][w] ** 2
            d_random = ((population - x) ** 2).sum(1).mean()
            assert entry["A_i"][w] == pytest.approx(d_random / var2, rel=1e-4)
            for concept, members in CONCEPTS.items():
                d_c = np.mean([((table[model.vocab.id(m)] - x) ** 2).sum() for m in members])
                assert entry["r"][concept][w] == pytest.approx(d_c / var2, rel=1e-4, abs=1e-6), (name, concept)
                assert entry["A_c"][concept][w] == pytest.approx(entry["A_i"][w] - entry["r"][concept][w],
                                                                 rel=1e-4, abs=1e-6)
        sad = words.index("sad")
        assert entry["r"]["itself"][sad] == pytest.approx(0.0, abs=1e-6)  # known answer
        assert entry["r"]["emotion"][sad] > 0
    assert out.figures["sigma-attributes.png"].startswith(b"\x89PNG")


def test_concepts_param_is_validated():
    schema = registry()["sigma"].params()
    assert schema.load({})["concepts"] == {}
    for bad in ({"concepts": {"c": []}}, {"concepts": {"": ["x"]}}, {"concepts": {"c": "x"}}):
        with pytest.raises(ma.ValidationError):
            schema.load(bad)
