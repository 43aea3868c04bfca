"""The zoo trainer end to end on a small slice of the split (the real run is `lantern zoo train minilm-rt`)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import worker.data.rt as rt
from worker.models import InputError, load_model, validate_bundle
from worker.zoo.train import train, trainable


@pytest.fixture
def small_split(monkeypatch):
    full = {name: rt.rt_split(name) for name in rt.SPLITS}
    sizes = {"train": 48, "dev": 16, "test": 16}
    monkeypatch.setattr(rt, "rt_split", lambda name: full[name][: sizes[name]])


def test_train_writes_a_loadable_bundle(tmp_path, small_split, minilm):
    metrics = train("minilm-rt", tmp_path / "a", seed=1)
    assert {"dev_accuracy", "test_accuracy", "train_accuracy", "seconds"} <= set(metrics)
    assert metrics["n_train"] == 48 and 0.0 <= metrics["test_accuracy"] <= 1.0
    spec = validate_bundle(tmp_path / "a")
    assert spec.config["metrics"] == metrics and spec.labels == ["negative", "positive"]
    adapter = load_model(tmp_path / "a")
    enc = adapter.encode({"text": "a fine film ."})
    assert adapter.forward(adapter.embed(enc), enc).logits.shape == (1, 2)
    # seeded: the same seed gives the same head
    train("minilm-rt", tmp_path / "b", seed=1)
    first, second = load_file(str(tmp_path / "a" / "head.safetensors")), load_file(str(tmp_path / "b" /
                                                                                        "head.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["training"]["seed"] == 1 and config["training"]["chosen"]["epoch"] >= 1


def test_unknown_trainer():
    assert "minilm-rt" in trainable()
    with pytest.raises(InputError, match="no trainer"):
        train("gpt-17")
