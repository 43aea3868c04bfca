"""Forward throughput of the word-level zoo models (all layers captured): one padded batch with masks vs the same
sentences one by one — what batching buys sigma and audits (the results are the same: tests/unit/native_checks)."""
from __future__ import annotations

import torch

from benchmarks import Row, timed

MODELS = ("bilstm-rt", "cnn-rt", "transformer-rt", "reverse-seq2seq")


def _texts(name: str, n: int) -> list[dict[str, str]]:
    if name == "reverse-seq2seq":
        return [{"text": " ".join("abcd"[(i * 7 + j) % 4] for j in range(3 + i % 8))} for i in range(n)]
    from worker.data.rt import rt_split

    return [{"text": text} for text, _ in rt_split("test")[:n]]


def run(quick: bool = False) -> list[Row]:
    from worker.models import load_model

    n = 16 if quick else 64
    rows = []
    for name in MODELS:
        adapter = load_model(name, device="cpu").load()
        inputs = _texts(name, n)
        batch = adapter.encode(inputs)
        items = [adapter.encode(item) for item in inputs]

        def batched(adapter=adapter, batch=batch):
            with torch.no_grad():
                adapter.forward(adapter.embed(batch), batch, capture=adapter.step_order)

        def one_by_one(adapter=adapter, items=items):
            with torch.no_grad():
                for enc in items:
                    adapter.forward(adapter.embed(enc), enc, capture=adapter.step_order)

        rows.append(Row(f"{name} forward, all layers, batch of {n}", "items/s", n / timed(batched),
                        n / timed(one_by_one), "one by one"))
    return rows
