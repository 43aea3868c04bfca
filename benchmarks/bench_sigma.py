"""sigma: Lantern's batched engine for all 7 hidden states of MiniLM vs the original procedure (one sentence, one
layer, one noise draw per step, 3,000 Adam steps at lr 0.01), side by side in one run.

The original is timed live on a few iterations per layer of the first sentence (after a 2-iteration warm-up) and
extrapolated linearly to 3,000 iterations × 7 layers × N sentences: its cost per iteration does not depend on the
iteration, and the sentences (6-18 words) cost about what the first does (the fixture
tests/fixtures/sigma/reference_minilm.json records the time of each full run; those with ``cached_state`` computed
s once and do not time the original). Both sides run
on one torch thread, as the workers do. Lantern: one fit per sentence over all 7 layers (the default settings: linear
start, 4 noise draws per step, stop on convergence, final objective re-estimated with 256 draws). Peak memory:
ru_maxrss of this process (MiB) after the Lantern run. ``--quick``: 2 sentences, 10 probe iterations per layer.
"""
from __future__ import annotations

import resource
import time

from benchmarks import Row

ITERATIONS = 3000


def run(quick: bool = False) -> list[Row]:
    import torch

    from scripts.sigma_reference import reference_sentences, run_one
    from worker.models import load_model
    from worker.sigma import Settings, View, fit

    torch.set_num_threads(1)  # both sides on one thread, as the workers and the reference script run
    adapter = load_model("all-minilm-l6-v2").load()
    layers = [n for n in adapter.layer_names if n not in ("pool", "output")]
    n = 2 if quick else 20
    texts = reference_sentences(n)
    bound = 10 * adapter.embedding_std()
    settings = Settings(lam=0.1, bound=bound, normalization="mean_square")
    t0 = time.perf_counter()
    for text in texts:
        fit(adapter, adapter.encode({"text": text}), [View(name) for name in layers], settings, seed=0)
    ours = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    probe = 10 if quick else 30
    per_iteration = []
    run_one(adapter, texts[0], layers[-1], 0.1, bound, 2, seed=0)  # warm-up (allocator, autograd), not counted
    for name in layers:
        result = run_one(adapter, texts[0], name, 0.1, bound, probe, seed=0)
        per_iteration.append(result["seconds_per_iteration"])
    original = sum(per_iteration) * ITERATIONS * len(texts)
    return [Row(f"sigma, 7 MiniLM layers x {len(texts)} sentences", "s", ours, original,
                f"original procedure (extrapolated from {probe} it/layer)", higher_is_better=False,
                note=f"peak RSS {peak:.0f} MiB")]
