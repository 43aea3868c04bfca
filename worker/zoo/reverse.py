"""Training ``reverse-seq2seq``: the synthetic reverse-sequence task of Guan et al. 2019 §4.1 (Fig. 2).

Data: texts of ``MIN_LENGTH``–``MAX_LENGTH`` words drawn uniformly from ``a b c d`` (length uniform too), generated
from seeded generators: training batches from ``seed``, the dev set from ``seed + 1``, the test set from ``seed + 2``
(short sequences can recur across sets: there are only 4ⁿ of length n). The target is the reversed text, then
``<eos>``; the decoder is teacher-forced (:mod:`worker.models.seq2seq`). Adam, cross-entropy over the real decoder
steps, one CPU thread; dev sequence accuracy every ``EVAL_EVERY`` steps picks the weights kept, and training stops
once it has been perfect twice or after ``MAX_STEPS``.

Metrics: token accuracy (share of decoder steps predicted right, ``<eos>`` included) and sequence accuracy (share of
texts with every step right, which is also what greedy decoding gets right) on dev and test.
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import torch

from worker.models.seq2seq import EOS, SOS, WORDS, Seq2SeqAdapter
from worker.models.words import PAD, UNK, Vocabulary
from worker.zoo.rt_models import install_bundle, one_thread, staging_adapter
from worker.zoo.train import Log, StateDict, _versions, _write_json_atomic

MIN_LENGTH, MAX_LENGTH = 3, 10
MODEL = {"embedding_size": 16, "hidden_size": 64, "layers": 2, "dropout": 0.0}
BATCH, LR, MAX_STEPS, EVAL_EVERY = 64, 3e-3, 3000, 250
N_DEV, N_TEST = 500, 1000


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(MIN_LENGTH, MAX_LENGTH))) for _ in range(count)]


def targets(adapter: Seq2SeqAdapter, texts: list[str]) -> torch.Tensor:
    """B×T_dec ids of the answer (reversed words, then <eos>), padded with -100 (ignored by cross-entropy)."""
    rows = [[adapter.vocab.id(w) for w in reversed(text.split())] + [adapter.vocab.id(EOS)] for text in texts]
    out = torch.full((len(rows), max(map(len, rows))), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def step_logits(adapter: Seq2SeqAdapter, module, texts: list[str]) -> torch.Tensor:
    enc = adapter.encode([{"text": t} for t in texts])
    x = module.embeddings(enc.input_ids)
    return dict(module.steps(x, **adapter.inputs(enc)))["output"]


def scores(adapter: Seq2SeqAdapter, module, texts: list[str]) -> dict[str, float]:
    module.eval()
    with torch.no_grad():
        gold = targets(adapter, texts)
        right = (step_logits(adapter, module, texts).argmax(-1) == gold) | (gold == -100)
    real = gold != -100
    return {"token_accuracy": float((right & real).sum() / real.sum()), "sequence_accuracy": float(right.all(1).float().mean())}


@one_thread()
def train_reverse_seq2seq(out_dir: Path, seed: int, log: Log) -> dict[str, Any]:
    torch.manual_seed(seed)
    vocab = Vocabulary((PAD, UNK, SOS, EOS, *WORDS))
    config = {
        "lantern": 1, "name": "reverse-seq2seq", "adapter": "seq2seq", "labels": None,
        "description": "2-layer LSTM encoder and decoder (64 units) with attention that reverses sequences of "
                       "a, b, c, d (Guan et al. 2019 §4.1); headless: explain its layers (timestamp mode)",
        "vocab": "vocab.txt", "weights": "model.safetensors", "max_tokens": 512, "model": MODEL,
        "task": {"words": list(WORDS), "min_length": MIN_LENGTH, "max_length": MAX_LENGTH},
        "license": "MIT (Lantern)", "source": "trained by worker.zoo.train (lantern zoo train reverse-seq2seq)",
    }
    module = Seq2SeqAdapter.architecture(MODEL, len(vocab), 0)
    dev, test = random_texts(N_DEV, seed + 1), random_texts(N_TEST, seed + 2)
    optimiser = torch.optim.Adam(module.parameters(), lr=LR)
    rng = random.Random(seed)
    best: tuple[float, int, StateDict | None]  # (dev sequence accuracy, step, weights at that step)
    started, best, perfect, history = time.perf_counter(), (-1.0, 0, None), 0, []
    with tempfile.TemporaryDirectory(prefix="reverse-seq2seq-") as tmp:
        staging = Path(tmp)
        # config["adapter"] is "seq2seq": staging_adapter builds a Seq2SeqAdapter
        adapter = cast(Seq2SeqAdapter, staging_adapter(staging, config, vocab, module))
        for step in range(1, MAX_STEPS + 1):
            module.train()
            texts = random_texts(BATCH, rng.randrange(2**31))
            logits = step_logits(adapter, module, texts)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets(adapter, texts).flatten())
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimiser.step()
            if step % EVAL_EVERY:
                continue
            accuracy = scores(adapter, module, dev)["sequence_accuracy"]
            history.append(round(accuracy, 4))
            log(f"step {step}: loss {loss.item():.4f}, dev sequence accuracy {accuracy:.4f}")
            if accuracy > best[0]:
                best = (accuracy, step, {k: v.detach().clone() for k, v in module.state_dict().items()})
            perfect = perfect + 1 if accuracy == 1.0 else 0
            if perfect == 2:
                break
        module.load_state_dict(best[2])
        train_seconds = round(time.perf_counter() - started, 1)
        config["training"] = {
            "seed": seed, "data": f"random a/b/c/d texts of {MIN_LENGTH}-{MAX_LENGTH} words (worker.zoo.reverse)",
            "optimiser": {"name": "Adam", "lr": LR, "batch_size": BATCH, "max_steps": MAX_STEPS,
                          "clip_grad_norm": 1.0},
            "selection": f"best dev sequence accuracy, checked every {EVAL_EVERY} steps", "best_step": best[1],
            "steps_run": step, "dev_history": history, "versions": _versions(),
        }
        shipped = cast(Seq2SeqAdapter, staging_adapter(staging, config, vocab, module).load())  # as above
        metrics = {f"{split}_{k}": round(v, 4) for split, texts in (("dev", dev), ("test", test))
                   for k, v in scores(shipped, shipped.module, texts).items()}
        metrics.update({"n_dev": N_DEV, "n_test": N_TEST, "train_seconds": train_seconds})
        config["metrics"] = metrics
        _write_json_atomic(staging / "config.json", config)
        install_bundle(staging, out_dir)
    log(f"reverse-seq2seq: {metrics}")
    return metrics
