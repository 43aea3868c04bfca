"""Integrated gradients' adaptive rule (the default: no ``steps``) against Captum's IntegratedGradients with many
Gauss–Legendre steps (an independent, near-exact quadrature), its completeness gap against S(x) − S(x') computed
apart, and ``steps`` still meaning exactly that many points."""
from __future__ import annotations

import pytest
import torch

from worker.methods import registry
from worker.methods.base import Target

TEXTS = ["a rare bird has more than enough charm to make it memorable", "Dull.",
         "the plot is an unbelievably tangled mess, yet the lead is wonderful"]


def ig(adapter, text: str, params: dict):
    entry = registry()["integrated_gradients"]
    enc = adapter.encode({"text": text})
    with torch.no_grad():
        label = adapter.forward(adapter.embed(enc), enc).logits.argmax(-1)
    return entry.run(adapter, enc, Target(label), entry.params().load(params)), enc, int(label)


@pytest.mark.parametrize("text", TEXTS)
def test_adaptive_matches_captum_with_many_steps(minilm_rt, text):
    from captum.attr import IntegratedGradients

    out, enc, label = ig(minilm_rt, text, {})
    x = minilm_rt.embed(enc)
    forward = lambda inputs: minilm_rt.forward(inputs, enc.repeat(inputs.shape[0])).logits  # noqa: E731
    theirs, their_delta = IntegratedGradients(forward).attribute(
        x, baselines=torch.zeros_like(x), target=label, n_steps=256, internal_batch_size=64,
        return_convergence_delta=True)
    assert abs(float(their_delta)) < 1e-4  # the reference itself is (nearly) exact
    scale = float(theirs[0].sum(-1).abs().max())
    assert float((out.tensors["scores"] - theirs[0].sum(-1)).abs().max()) <= 0.02 * scale
    with torch.no_grad():
        gap = forward(x)[0, label] - forward(torch.zeros_like(x))[0, label]
    assert out.json["delta"] == pytest.approx(float(out.tensors["attribution"].sum() - gap), abs=1e-5)
    assert abs(out.json["delta"]) <= out.json["tolerance"] == 1e-3
    assert out.json["method"] == "adaptive" and 5 <= out.json["steps"] <= 1024


def test_a_tighter_tolerance_takes_more_points_and_meets_it(minilm_rt):
    loose, _, _ = ig(minilm_rt, TEXTS[0], {"tolerance": 1e-2})
    tight, _, _ = ig(minilm_rt, TEXTS[0], {"tolerance": 1e-5})
    assert abs(tight.json["delta"]) <= 1e-5 and abs(loose.json["delta"]) <= 1e-2
    assert tight.json["steps"] > loose.json["steps"]


def test_steps_given_means_exactly_that_many(minilm_rt):
    out, _, _ = ig(minilm_rt, TEXTS[0], {"steps": 7, "method": "riemann_left"})
    assert out.json["steps"] == 7 and out.json["method"] == "riemann_left" and "tolerance" not in out.json


def test_adaptive_batch_equals_items(minilm_rt):
    from worker.methods.integrated_gradients import run_batch

    entry = registry()["integrated_gradients"]
    params = entry.params().load({})
    texts = [{"text": t} for t in ("a fine film .", "a dull film .", "Dull.")]
    enc = minilm_rt.encode(texts)
    with torch.no_grad():
        label = minilm_rt.forward(minilm_rt.embed(enc), enc).logits.argmax(-1)
    together = run_batch(minilm_rt, enc, Target(label), params)
    for i, one in enumerate(texts):
        alone, _, _ = ig(minilm_rt, one["text"], {})
        assert together[i].json["steps"] == alone.json["steps"]
        assert together[i].json["scores"] == pytest.approx(alone.json["scores"], rel=1e-4, abs=1e-5)
