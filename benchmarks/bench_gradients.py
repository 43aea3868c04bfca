"""Gradient saliency and integrated gradients (32 steps) on Rotten Tomatoes test sentences with minilm-rt: Lantern's
engine (gradient: items padded into batches; IG: the method's ``run_batch`` as audits call it — the items, sorted by
length, run item after item in passes of ``internal_batch_size`` rows, each padded to its own rows' longest item, and
each result carries its completeness gap) vs Captum called the
usual way (one sentence per ``attribute`` call; IG with ``n_steps=32`` and no internal batch size). Throughput in sentences
per second, the median of alternating repeats; the note gives the largest relative difference between the two
sides' token scores (the numbers must be the same) and the rows per pass (what bounds memory).

Then (issue 20, ``_ig_as_a_job``, at least 64 sentences): integrated gradients at the method's defaults vs Captum's
IG at its defaults, with the mean completeness gap of each and our points per sentence — the method alone, and as a
job computes it at faithfulness "full" and "basic" (the request option; docs/api.md), each against the same Captum
time, with CPU-time ratios (robust on a shared machine) in the notes. ``--device cuda``: both sides on the GPU.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from benchmarks import Row, device

BATCH = 32  # sentences per gradient pass
IG_STEPS = 32
IG_ROWS = 64  # IG internal batch size (path points × sentences per pass)
Out = TypeVar("Out")
JOB_SENTENCES = 64  # the fewest sentences for IG at its defaults vs Captum's (accuracy is compared on them)


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

    from worker.methods.base import Target
    from worker.methods.gradient import aggregate, input_gradient
    from worker.methods.integrated_gradients import run_batch as ig_batch
    from worker.models import load_model

    adapter = load_model("minilm-rt", device=device()).load()
    n = 32 if quick else 256
    repeats = 3 if quick else 5
    texts, labels, items = _sentences(adapter, n)
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
    rows += _ig_as_a_job(adapter, max(n, JOB_SENTENCES))
    return rows


def _sentences(adapter, n: int) -> tuple[list[str], list[int], list]:
    """The first n RT test sentences sorted by length (similar lengths together: less padding), each one's predicted
    class and its own encoding."""
    from worker.data.rt import rt_split

    texts = sorted((text for text, _ in rt_split("test")[:n]), key=len)
    items = [adapter.encode({"text": t}).to(adapter.device) for t in texts]
    with torch.no_grad():
        labels = [int(adapter.forward(adapter.embed(e), e).logits.argmax()) for e in items]
    return texts, labels, items


def _timed(fn: Callable[[], Out]) -> tuple[float, float, Out]:
    """Wall and CPU seconds of one call, and its value. With one torch thread the CPU time is the robust one on a
    shared machine (another process's load stretches the wall time, not the CPU time)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _ig_as_a_job(adapter, n: int) -> list[Row]:
    """Integrated gradients at the method's defaults (adaptive to its tolerance) vs Captum's IG at its defaults
    (Gauss–Legendre, 50 steps, one call per sentence), on the first n sentences (at least ``JOB_SENTENCES``, also
    with ``--quick``), each timed once, in the order IG alone, Captum, job at faithfulness "basic", job "full":
    IG alone is the method's ``run_batch`` on all the sentences; a job is ``explain_batch`` of all of them,
    faithfulness included (``basic``: no normalised AOPC bound search, docs/api.md). Accuracy: the mean |completeness
    gap| of each (ours: the results' ``delta``; Captum's: its convergence delta, computed outside the timing); the
    points per sentence (Captum: 50). Rows in wall time; the notes give the CPU-time ratios too."""
    from captum.attr import IntegratedGradients

    from worker.methods import explain_batch
    from worker.methods.aopc_bounds import CACHE
    from worker.methods.base import Target
    from worker.methods.integrated_gradients import IntegratedGradientsParams, run_batch

    texts, labels, items = _sentences(adapter, n)
    encoding = adapter.encode([{"text": t} for t in texts]).to(adapter.device)
    target = Target(torch.tensor(labels, device=adapter.device))

    def alone() -> list[dict]:
        return [r.json for r in run_batch(adapter, encoding, target, IntegratedGradientsParams().load({}))]

    def job(level: str) -> list[dict]:
        CACHE.items.clear()  # every sentence's bounds searched, as for new texts (the cache keeps 64 inputs)
        results = explain_batch(adapter, [{"text": t} for t in texts], ["integrated_gradients"], figures=False,
                                faithfulness=level)
        return [r.result["methods"]["integrated_gradients"] for r in results]

    def captum(enc, label: int, delta: bool):
        ig = IntegratedGradients(lambda x, enc=enc: adapter.forward(x, enc.repeat(x.shape[0])).logits)
        x = adapter.embed(enc)
        return ig.attribute(x, baselines=torch.zeros_like(x), target=label, return_convergence_delta=delta)

    def captum_all() -> None:
        for enc, label in zip(items, labels, strict=True):
            captum(enc, label, False)

    load = open("/proc/loadavg").read().split()[0]
    ig_wall, ig_cpu, ig_parts = _timed(alone)
    their_wall, their_cpu, _ = _timed(captum_all)
    basic_wall, basic_cpu, basic_parts = _timed(lambda: job("basic"))
    full_wall, full_cpu, full_parts = _timed(lambda: job("full"))
    load += "-" + open("/proc/loadavg").read().split()[0]
    their_gap = statistics.mean(abs(float(captum(e, y, True)[1])) for e, y in zip(items, labels, strict=True))
    our_gap = statistics.mean(abs(p["delta"]) for p in ig_parts)
    points = statistics.mean(p["steps"] for p in ig_parts)
    where = f"{n} RT sentences, minilm-rt ({device()})"
    captum_name = "Captum IG defaults (GL, 50 steps)"
    rows = [Row(f"integrated gradients alone (defaults), {where}", "sentences/s", n / ig_wall, n / their_wall,
                captum_name, note=f"CPU time {their_cpu / ig_cpu:.2f}x; mean |delta| ours {our_gap:.1e} vs Captum "
                                  f"{their_gap:.1e}; ours {points:.1f} points/sentence (adaptive) vs 50; load {load}")]
    for level, wall, cpu, parts in (("full", full_wall, full_cpu, full_parts), ("basic", basic_wall, basic_cpu,
                                                                               basic_parts)):
        method = sum(p["seconds"] for p in parts)  # the IG runs (wall)
        rows.append(Row(f"IG as a job, faithfulness {level}, {where}", "sentences/s", n / wall, n / their_wall,
                        captum_name, note=f"CPU time {their_cpu / cpu:.2f}x; faithfulness included on our side only: "
                                          f"IG {method / wall:.0%} of our time; load {load}"))
    return rows
