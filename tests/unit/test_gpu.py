"""The CUDA path gives the CPU's numbers (within float tolerance): gradients, integrated gradients and a sigma fit on
minilm-rt / MiniLM. Skipped without CUDA; ``benchmarks/gpu.sh`` runs them on a GPU host."""
from __future__ import annotations

import pytest
import torch

from worker.methods import explain
from worker.models import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
TEXT = {"text": "a rare bird has more than enough charm to make it memorable"}


@pytest.mark.parametrize(("method", "params"), [("gradient", {}), ("integrated_gradients", {"steps": 32}),
                                                ("integrated_gradients", {})])
def test_cuda_scores_equal_cpu(method, params):
    cpu = explain(load_model("minilm-rt", device="cpu"), TEXT, [method], params={method: params}, figures=False)
    gpu = explain(load_model("minilm-rt", device="cuda"), TEXT, [method], params={method: params}, figures=False)
    ours, theirs = gpu.result["methods"][method], cpu.result["methods"][method]
    scale = max(abs(v) for v in theirs["scores"])
    assert max(abs(a - b) for a, b in zip(ours["scores"], theirs["scores"], strict=True)) <= 1e-3 * scale
    if method == "integrated_gradients" and "steps" in params:
        assert ours["steps"] == theirs["steps"] == params["steps"]
    elif method == "integrated_gradients":  # adaptive: points may differ by a bisection where a gap is near the bound
        assert abs(ours["delta"]) <= ours["tolerance"]


def test_cuda_sigma_fit_reaches_the_cpu_objective():
    """Noise is drawn on the CPU from the same seed either way, so both fits see the same draws."""
    from worker.sigma import Settings, View, fit

    results = []
    for device in ("cpu", "cuda"):
        adapter = load_model("all-minilm-l6-v2", device=device).load()
        settings = Settings(lam=0.1, bound=10 * adapter.embedding_std(), normalization="mean_square")
        results.append(fit(adapter, adapter.encode(TEXT).to(adapter.device), [View("layer.3")], settings, seed=0))
    cpu, gpu = (float(r.objective[0, 0]) for r in results)
    assert gpu == pytest.approx(cpu, rel=0.01)
