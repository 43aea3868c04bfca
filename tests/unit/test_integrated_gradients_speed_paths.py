"""Integrated gradients' adaptive rule as it runs for speed: items of several lengths share padded passes and keep
f(α) = ∂S/∂x · (x − x') per node as a float (the gaps' bookkeeping). Checked against gradients computed apart, one item and one point at a
time through ``input_gradient`` (no padding, no shared passes), and against the items run alone."""
from __future__ import annotations

import pytest
import torch

from worker.methods import integrated_gradients as ig
from worker.methods import registry
from worker.methods.base import Target
from worker.methods.gradient import input_gradient

TEXTS = ["a rare bird has more than enough charm to make it memorable", "Dull.",
         "the plot is an unbelievably tangled mess, yet the lead is wonderful"]


def _batch(adapter, texts):
    enc = adapter.encode([{"text": t} for t in texts])
    x = adapter.embed(enc)
    with torch.no_grad():
        label = adapter.forward(x, enc).logits.argmax(-1)
    return enc, x, Target(label)


def test_nodes_and_attribution_equal_gradients_computed_apart(minilm_rt):
    enc, x, target = _batch(minilm_rt, TEXTS)
    baseline = x.clone()  # x at the padding (no path there), zero on each item's tokens
    for j, tokens in enumerate(enc.tokens):
        baseline[j, : len(tokens)] = 0.0
    paths = ig.adaptive_paths(minilm_rt, enc, x, baseline, target, 8e-4, internal_batch_size=5)
    attribution, used, _ = ig.adaptive_integrated_gradients(minilm_rt, enc, x, baseline, target, 8e-4, 5)
    for j, path in enumerate(paths):
        one, n = enc.item(j), len(enc.tokens[j])
        xj, diff = x[j : j + 1, :n], x[j : j + 1, :n] - baseline[j : j + 1, :n]
        total = torch.zeros_like(xj)
        for panel in path.panels:
            for alpha, w in ig._nodes(panel):
                grad = input_gradient(minilm_rt, alpha * xj, one, Target(target.index[j : j + 1]))
                with torch.no_grad():
                    s = float(minilm_rt.forward(alpha * xj, one).logits[0, int(target.index[j])])
                assert path.f[alpha] == pytest.approx(float((grad * diff).sum()), rel=1e-4, abs=1e-5)
                assert path.s[alpha] == pytest.approx(s, abs=1e-5)
                total += w * grad
        assert used[j] == len(path.grads) == len({a for p in path.panels for a, _ in ig._nodes(p)})
        want = diff * total
        assert float((attribution[j, :n] - want[0]).abs().max()) <= 1e-4 * float(want.abs().max())
        assert not attribution[j, n:].any()  # nothing at the padding
        gaps = sum(path.gap(p) for p in path.panels)
        assert abs(gaps) <= 8e-4 or any(hi - lo <= ig.MIN_WIDTH for lo, hi in path.panels)
        assert gaps == pytest.approx(float(want.sum()) - (path.s[1.0] - path.s[0.0]), abs=2e-5)


def test_adaptive_over_several_groups_equals_items(minilm_rt):
    entry = registry()["integrated_gradients"]
    params = entry.params().load({"internal_batch_size": 2})  # groups of 2 items, passes of 2 rows
    enc, _, target = _batch(minilm_rt, TEXTS)
    together = ig.run_batch(minilm_rt, enc, target, params)
    for i, got in enumerate(together):
        alone = ig.run(minilm_rt, enc.item(i), Target(target.index[i : i + 1]), params)
        assert got.json["steps"] == alone.json["steps"]
        assert got.json["delta"] == pytest.approx(alone.json["delta"], abs=1e-5)
        assert got.json["scores"] == pytest.approx(alone.json["scores"], rel=1e-4, abs=1e-5)
