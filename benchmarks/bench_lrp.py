"""`lrp` against `gradient` on Rotten Tomatoes test sentences, per model with LRP rules: the cost of LRP's one
rule-modified forward and backward pass relative to a plain gradient's (the issue's bound: at most 3 forward+backward
passes per sentence on minilm-rt). Both through the methods' ``run_batch`` on the same padded batches, alternately
timed; sentences per second; ratio = gradient time / lrp time (so 0.5 = LRP costs two gradients)."""
from __future__ import annotations

import torch

from benchmarks import Row
from benchmarks.bench_gradients import _alternate

BATCH = 32


def run(quick: bool = False) -> list[Row]:
    from worker.data.rt import rt_split
    from worker.methods import registry
    from worker.methods.base import Target
    from worker.models import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = registry()
    n = 32 if quick else 128
    texts = sorted((text for text, _ in rt_split("test")[:n]), key=len)
    rows = []
    for name in ("minilm-rt", "transformer-rt", "bilstm-rt", "cnn-rt"):
        adapter = load_model(name, device=device).load()
        batches = []
        for start in range(0, n, BATCH):
            enc = adapter.encode([{"text": t} for t in texts[start:start + BATCH]]).to(adapter.device)
            with torch.no_grad():
                label = adapter.forward(adapter.embed(enc), enc).logits.argmax(-1)
            batches.append((enc, Target(label)))

        def method(m: str, adapter=adapter, batches=batches):
            params = table[m].params().load({})
            return lambda: [table[m].run_batch(adapter, enc, target, params) for enc, target in batches]

        lrp_s, gradient_s = _alternate(method("lrp"), method("gradient"), 3 if quick else 5)
        rows.append(Row(f"lrp vs gradient, {name} ({n} sentences)", "sentences/s", n / lrp_s, n / gradient_s,
                        "gradient", note=f"lrp = {lrp_s / gradient_s:.2f} gradient passes"))
    return rows
