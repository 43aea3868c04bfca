"""Gradient saliency and integrated gradients (32 steps) on Rotten Tomatoes test sentences with minilm-rt: Lantern's
engine (gradient: items padded into batches; IG: the method's ``run_batch`` as audits call it — items of one token
count share passes of ``internal_batch_size`` rows, and each result carries its completeness gap) vs Captum called the
usual way (one sentence per ``attribute`` call; IG with ``n_steps=32`` and no internal batch size). Throughput in sentences
per second, the median of alternating repeats; the note gives the largest relative difference between the two
sides' token scores (the numbers must be the same) and the rows per pass (what bounds memory).

Third row (issue 20): integrated gradients at the method's defaults as a job computes it vs Captum's IG at its
defaults, with the mean completeness gap of each (``_ig_as_a_job``); fourth, the same job with the request option
``faithfulness: "basic"`` (no normalised AOPC's bound search; docs/api.md) timed in the same run against the same
Captum time. ``--device cuda``: both sides on the GPU.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from benchmarks import Row, device

BATCH = 32  # sentences per gradient pass
IG_STEPS = 32
IG_ROWS = 64  # IG internal batch size (path points × sentences per pass)


def _alternate(ours: Callable[[], object], theirs: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time of each, run alternately (ours, theirs, ours, …) after one warm-up call of each."""
    ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((ours, a), (theirs, b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def _relative(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    return max(float((o - t).abs().max() / t.abs().max().clamp_min(1e-30)) for o, t in zip(ours, theirs, strict=True))


def run(quick: bool = False) -> list[Row]:
    from captum.attr import IntegratedGradients, Saliency

    from worker.data.rt import rt_split
    from worker.methods.base import Target
    from worker.methods.gradient import aggregate, input_gradient
    from worker.methods.integrated_gradients import run_batch as ig_batch
    from worker.models import load_model

    adapter = load_model("minilm-rt", device=device()).load()
    n = 32 if quick else 256
    repeats = 3 if quick else 5
    texts = sorted((text for text, _ in rt_split("test")[:n]), key=len)  # similar lengths together: less padding
    items = [adapter.encode({"text": t}).to(adapter.device) for t in texts]
    with torch.no_grad():
        labels = [int(adapter.forward(adapter.embed(e), e).logits.argmax()) for e in items]
    batches = []
    for start in range(0, n, BATCH):
        enc = adapter.encode([{"text": t} for t in texts[start : start + BATCH]]).to(adapter.device)
        batches.append((enc, torch.tensor(labels[start : start + BATCH], device=adapter.device)))

    def unpad(scores: torch.Tensor, enc) -> list[torch.Tensor]:
        return [scores[i, : len(enc.tokens[i])].cpu() for i in range(len(enc))]

    def lantern_gradient() -> list[torch.Tensor]:
        out = []
        for enc, label in batches:
            out += unpad(aggregate(input_gradient(adapter, adapter.embed(enc), enc, Target(label))), enc)
        return out

    def captum_gradient() -> list[torch.Tensor]:
        out = []
        for enc, label in zip(items, labels, strict=True):
            saliency = Saliency(lambda x, enc=enc: adapter.forward(x, enc).logits)
            out.append(saliency.attribute(adapter.embed(enc), target=label, abs=True)[0].mean(-1).cpu())
        return out

    ig_params = {"baseline": "zero", "steps": IG_STEPS, "method": "gausslegendre", "internal_batch_size": IG_ROWS}

    def lantern_ig() -> list[torch.Tensor]:
        out = []
        for enc, label in batches:
            out += [r.tensors["scores"] for r in ig_batch(adapter, enc, Target(label), ig_params)]
        return out

    def captum_ig() -> list[torch.Tensor]:
        out = []
        for enc, label in zip(items, labels, strict=True):
            ig = IntegratedGradients(lambda x, enc=enc: adapter.forward(x, enc.repeat(x.shape[0])).logits)
            x = adapter.embed(enc)
            out.append(ig.attribute(x, baselines=torch.zeros_like(x), target=label, n_steps=IG_STEPS)[0]
                       .sum(-1).cpu())
        return out

    rows = []
    for name, ours, theirs, note in (
        ("gradient saliency", lantern_gradient, captum_gradient, f"batches of {BATCH} sentences"),
        (f"integrated gradients ({IG_STEPS} steps)", lantern_ig, captum_ig, f"internal batch {IG_ROWS} rows"),
    ):
        diff = _relative(ours(), theirs())
        t_ours, t_theirs = _alternate(ours, theirs, repeats)
        rows.append(Row(f"{name}, {n} RT sentences, minilm-rt ({device()})", "sentences/s", n / t_ours,
                        n / t_theirs, "Captum, one call per sentence",
                        note=f"{note}; max rel diff {diff:.1e}; median of {repeats}"))
    rows += _ig_as_a_job(adapter, texts, labels, items)
    return rows


def _ig_as_a_job(adapter, texts: list[str], labels: list[int], items: list) -> list[Row]:
    """Integrated gradients at the method's defaults (adaptive to its tolerance) as a job computes it —
    ``explain_batch`` of all the sentences, faithfulness included — vs Captum's IG at its defaults (Gauss–Legendre,
    50 steps, one call per sentence), timed once each; accuracy: the mean |completeness gap| of each (ours: the
    results' ``delta``; Captum's: its convergence delta, computed outside the timing). Then the same job at
    faithfulness "basic" against the same Captum time."""
    from captum.attr import IntegratedGradients

    from worker.methods import explain_batch
    from worker.methods.aopc_bounds import CACHE

    def job(level: str) -> tuple[float, list[dict]]:
        CACHE.items.clear()  # every sentence's bounds searched, as for new texts (the cache keeps 64 inputs)
        t0 = time.perf_counter()
        results = explain_batch(adapter, [{"text": t} for t in texts], ["integrated_gradients"], figures=False,
                                faithfulness=level)
        return time.perf_counter() - t0, [r.result["methods"]["integrated_gradients"] for r in results]

    ours, parts = job("full")

    def captum(enc, label: int, delta: bool):
        ig = IntegratedGradients(lambda x, enc=enc: adapter.forward(x, enc.repeat(x.shape[0])).logits)
        x = adapter.embed(enc)
        return ig.attribute(x, baselines=torch.zeros_like(x), target=label, return_convergence_delta=delta)

    t0 = time.perf_counter()
    for enc, label in zip(items, labels, strict=True):
        captum(enc, label, False)
    theirs = time.perf_counter() - t0
    their_gap = statistics.mean(abs(float(captum(e, y, True)[1])) for e, y in zip(items, labels, strict=True))
    our_gap = statistics.mean(abs(p["delta"]) for p in parts)
    points = statistics.mean(p["steps"] for p in parts)
    method = sum(p["seconds"] for p in parts)  # the IG runs themselves; the rest is faithfulness and bookkeeping
    basic, basic_parts = job("basic")
    basic_method = sum(p["seconds"] for p in basic_parts)
    n = len(texts)
    return [Row(f"integrated gradients as a job (defaults), {n} RT sentences, minilm-rt ({device()})", "sentences/s",
                n / ours, n / theirs, "Captum IG defaults (GL, 50 steps)",
                note=f"mean |delta| ours {our_gap:.1e} vs Captum {their_gap:.1e}; ours {points:.1f} points/sentence "
                     f"(adaptive), faithfulness included on our side only: IG {method / ours:.0%} of our time, "
                     f"faithfulness with its bound search and the rest {1 - method / ours:.0%}"),
            Row(f"IG as a job, faithfulness basic, {n} RT sentences, minilm-rt ({device()})", "sentences/s",
                n / basic, n / theirs, "Captum IG defaults (GL, 50 steps)",
                note=f"{ours / basic:.2f}x the full job; IG {basic_method / basic:.0%} of our time, faithfulness "
                     f"without the bound search and the rest {1 - basic_method / basic:.0%}")]
