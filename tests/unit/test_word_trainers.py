"""The word-level zoo trainers end to end on small slices (the real runs are `lantern zoo train NAME`)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

import worker.data.rt as rt
from worker.models import load_model, validate_bundle
from worker.zoo import reverse, rt_models
from worker.zoo.train import train, trainable


@pytest.fixture
def small_split(monkeypatch):
    full = {name: rt.rt_split(name) for name in rt.SPLITS}
    sizes = {"train": 64, "dev": 16, "test": 16}
    monkeypatch.setattr(rt, "rt_split", lambda name: full[name][: sizes[name]])
    monkeypatch.setattr(rt_models, "GLOVE_TOP", 100)


def test_all_registered():
    assert {"bilstm-rt", "cnn-rt", "transformer-rt", "reverse-seq2seq"} <= set(trainable())


@pytest.mark.parametrize("name", ["cnn-rt", "transformer-rt"])
def test_rt_trainer_writes_a_seeded_loadable_bundle(tmp_path, small_split, monkeypatch, name):
    monkeypatch.setitem(rt_models.RECIPES, name, dataclasses.replace(rt_models.RECIPES[name], max_epochs=2))
    metrics = train(name, tmp_path / "a", seed=3)
    assert metrics["n_train"] == 64 and 0.0 <= metrics["dev_accuracy"] <= 1.0
    spec = validate_bundle(tmp_path / "a")
    assert spec.config["metrics"] == metrics and spec.config["training"]["epochs_run"] == 2
    adapter = load_model(tmp_path / "a").load()
    assert adapter.layer_names == load_model(name).layer_names
    from worker.zoo.glove import corpus_vocabulary, embedding_rows

    texts = [text for text, _ in rt.rt_split("train")]
    vocab = corpus_vocabulary(texts, rt_models.RECIPES[name].specials, 100)
    assert adapter.vocab == vocab
    words = torch.tensor([not t.startswith("<") for t in vocab.tokens])
    assert torch.equal(adapter.module.embeddings.weight[words], embedding_rows(vocab)[words])  # GloVe stays frozen
    train(name, tmp_path / "b", seed=3)
    first, second = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_reverse_trainer(tmp_path, monkeypatch):
    for key, value in {"MAX_STEPS": 20, "EVAL_EVERY": 10, "N_DEV": 20, "N_TEST": 20}.items():
        monkeypatch.setattr(reverse, key, value)
    metrics = train("reverse-seq2seq", tmp_path, seed=0)
    assert {"dev_sequence_accuracy", "test_token_accuracy"} <= set(metrics)
    adapter = load_model(tmp_path)
    assert adapter.labels is None and adapter.layer_names == ["embeddings", "encoder", "decoder", "output"]
    assert validate_bundle(tmp_path).config["training"]["steps_run"] == 20


def test_training_leaves_the_thread_count_alone(tmp_path, monkeypatch):
    for key, value in {"MAX_STEPS": 2, "EVAL_EVERY": 1, "N_DEV": 4, "N_TEST": 4}.items():
        monkeypatch.setattr(reverse, key, value)
    before = torch.get_num_threads()
    train("reverse-seq2seq", tmp_path, seed=0)
    assert torch.get_num_threads() == before
