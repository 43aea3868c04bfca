"""sigma: Lantern's batched engine for all 7 hidden states of MiniLM vs the authors' procedure at its defaults (one
sentence, one layer, one noise draw per step, s recomputed every step, 5,000 Adam steps at lr 0.01), side by side in
one run, on one torch thread and on two.

The original is timed live on a few iterations per (sentence, layer) after a 2-iteration warm-up and extrapolated
linearly to 5,000 iterations: its cost per iteration does not depend on the iteration. Lantern: the method's default
settings (``newton``: per-token fixed-point steps on log σ from the linear start, 4 noise draws per step, stop on
convergence, final objective re-estimated with 64 draws); one fit per sentence over all 7 layers, or (20 sentences)
sentences of similar token count packed into one fit. The "before" row is the engine's previous default (``adam``:
Adam from the linear start, 256 evaluation draws) on the same sentence. Peak memory: ru_maxrss of this process (MiB).
``--quick``: 2 sentences, one thread, 4 probe iterations. ``--device cuda``: Lantern on the GPU, the original (CPU
code: it draws its noise on the CPU) on the CPU. The objectives are checked against the original's by
``python -m scripts.sigma_agreement`` (not here: that is accuracy, this is speed).
"""
from __future__ import annotations

import resource
import time

from benchmarks import Row, device

ITERATIONS = 5000  # the authors' default
PACK = 4  # sentences per packed fit (similar token counts)


def packed(texts: list[str], lengths: dict[str, int], size: int) -> list[list[str]]:
    """The texts sorted by token count, in groups of at most `size`: little padding in each fit."""
    ordered = sorted(texts, key=lengths.__getitem__)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def run(quick: bool = False) -> list[Row]:
    import torch

    from scripts.sigma_reference import reference_sentences, run_one
    from worker.models import load_model
    from worker.sigma import Settings, View, fit

    adapter = load_model("all-minilm-l6-v2", device=device()).load()
    reference = adapter if device() == "cpu" else load_model("all-minilm-l6-v2").load()  # the original: CPU code
    layers = [n for n in adapter.layer_names if n not in ("pool", "output")]
    views = [View(name) for name in layers]
    texts = reference_sentences(2 if quick else 20)
    lengths = {t: len(adapter.encode({"text": t}).tokens[0]) for t in texts}
    bound = 10 * adapter.embedding_std()
    settings = Settings(lam=0.1, bound=bound, normalization="mean_square")
    before = Settings(lam=0.1, bound=bound, normalization="mean_square", optimizer="adam", eval_samples=256)
    probe = 4 if quick else 8

    def lantern(groups: list[list[str]], chosen: Settings) -> float:
        t0 = time.perf_counter()
        for group in groups:
            fit(adapter, adapter.encode([{"text": t} for t in group]), views, chosen, seed=0)
        return time.perf_counter() - t0

    def original(sentences: list[str], iterations: int) -> float:
        """Extrapolated seconds of the authors' procedure on these sentences, all 7 layers."""
        run_one(reference, sentences[0], layers[-1], 0.1, bound, 2, seed=0)  # warm-up, not counted
        return sum(run_one(reference, text, name, 0.1, bound, iterations, seed=0)["seconds_per_iteration"]
                   for text in sentences for name in layers) * ITERATIONS

    rows = []
    for threads in (1,) if quick else (1, 2):
        torch.set_num_threads(threads)
        base = f"sigma, 7 MiniLM layers x {{}}, {threads} thread{'s' if threads > 1 else ''}"
        one = [[texts[0]]]
        theirs = original(texts[:1], 3 * probe)
        ours = lantern(one, settings)
        old = lantern(one, before)
        extrapolated = f"original procedure, {ITERATIONS} it (extrapolated from {3 * probe} it/layer)"
        rows.append(Row(base.format("1 sentence"), "s", ours, theirs, extrapolated, higher_is_better=False,
                        note=f"{lengths[texts[0]]} tokens"))
        rows.append(Row(base.format("1 sentence, before (adam)"), "s", old, theirs, extrapolated,
                        higher_is_better=False, note="the previous default optimizer"))
        ours = lantern(packed(texts, lengths, PACK), settings)
        theirs = original(texts, probe)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(Row(base.format(f"{len(texts)} sentences"), "s", ours, theirs,
                        f"original procedure, {ITERATIONS} it (extrapolated from {probe} it/layer/sentence)",
                        higher_is_better=False, note=f"packed by length, {PACK} per fit; peak RSS {peak:.0f} MiB"))
    return rows
