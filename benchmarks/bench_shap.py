"""`shap` (partition, max_evals 500) against the shap package's Partition explainer on Rotten Tomatoes test sentences
with minilm-rt: the same model, id-level masking (shap's Text masker with ``output_type="token_ids"``), clustering,
max_evals, batch size and tie-break seed, so the numbers are the same (the note gives the largest difference).
Sentences per second, the two sides run alternately sentence by sentence (after one warm-up sentence each).
``LANTERN_BENCH_SHAP_SENTENCES`` overrides the number of sentences (256; 4 with --quick)."""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import torch

from benchmarks import Row

MAX_EVALS = 500
BATCH = 64


def run(quick: bool = False) -> list[Row]:
    import shap

    from worker.data.rt import rt_split
    from worker.methods import registry
    from worker.methods.base import Target
    from worker.models import load_model

    n = int(os.environ.get("LANTERN_BENCH_SHAP_SENTENCES", 4 if quick else 256))
    adapter = load_model("minilm-rt", device="cuda" if torch.cuda.is_available() else "cpu").load()
    method = registry()["shap"]
    params = method.params().load({"max_evals": MAX_EVALS, "batch_size": BATCH})
    masker = shap.maskers.Text(adapter.tokenizer, output_type="token_ids")
    ours_s = theirs_s = worst = 0.0
    texts = [text for text, _ in rt_split("test")[:n]]
    for i, text in enumerate([texts[0], *texts]):  # the first run of each warms up (shap's numba compiles)
        enc = adapter.encode({"text": text}).to(adapter.device)
        with torch.no_grad():
            label = adapter.forward(adapter.embed(enc), enc).logits.argmax(-1)

        def f(ids, enc=enc, label=label):
            ids = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=adapter.device)
            batch = dataclasses.replace(enc.repeat(ids.shape[0]), input_ids=ids)
            with torch.no_grad():
                return adapter.forward(adapter.embed(batch), batch).logits[:, int(label)].double().cpu().numpy()

        t0 = time.perf_counter()
        ours = method.run(adapter, enc, Target(label), params, seed=0).json["scores"]
        t1 = time.perf_counter()
        np.random.seed(0)
        theirs = shap.explainers.Partition(f, masker)([text], max_evals=MAX_EVALS, batch_size=BATCH, silent=True)
        t2 = time.perf_counter()
        worst = max(worst, float(np.abs(np.asarray(ours) - theirs.values[0]).max()))
        if i > 0:
            ours_s, theirs_s = ours_s + t1 - t0, theirs_s + t2 - t1
    return [Row(f"shap partition vs shap package, minilm-rt ({n} sentences, max_evals {MAX_EVALS})", "sentences/s",
                n / ours_s, n / theirs_s, f"shap {shap.__version__} Partition",
                note=f"max |difference| {worst:.1e}")]
