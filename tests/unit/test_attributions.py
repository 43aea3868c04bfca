"""Gradient-family methods against Captum on the same model and inputs (issue 5: 1e-5 relative)."""
from __future__ import annotations

import pytest
import torch

from worker.methods import registry
from worker.methods.base import Target

SENTENCE = "an utterly charming , unpretentious little film that never overstays its welcome ."
RTOL = 1e-5


def run(adapter, method, params=None, text=SENTENCE, seed=0, progress=lambda f: None):
    entry = registry()[method]
    enc = adapter.encode({"text": text})
    with torch.no_grad():
        label = adapter.forward(adapter.embed(enc), enc).logits.argmax(-1)
    out = entry.run(adapter, enc, Target(label), entry.params().load(params or {}), progress=progress, seed=seed)
    return out, enc, int(label)


def close(ours, theirs, rtol=RTOL):
    """Relative agreement, scaled by the largest magnitude (entries near 0 are compared at that scale)."""
    ours, theirs = ours.detach(), theirs.detach()
    scale = theirs.abs().max()
    assert float((ours - theirs).abs().max()) <= rtol * float(scale), float((ours - theirs).abs().max() / scale)


def forward_fn(adapter, enc):
    return lambda inputs: adapter.forward(inputs, enc.repeat(inputs.shape[0])).logits


def test_grad_x_input_equals_captum(minilm_rt):
    from captum.attr import InputXGradient

    out, enc, label = run(minilm_rt, "grad_x_input")
    x = minilm_rt.embed(enc)
    theirs = InputXGradient(forward_fn(minilm_rt, enc)).attribute(x.clone().requires_grad_(True), target=label)[0]
    close(out.tensors["attribution"], theirs)
    close(out.tensors["scores"], theirs.sum(-1))


@pytest.mark.parametrize(("method", "baseline", "batch"), [("gausslegendre", "zero", 7),
                                                            ("riemann_middle", "mask", 32)])
def test_integrated_gradients_equals_captum(minilm_rt, method, baseline, batch):
    from captum.attr import IntegratedGradients

    from worker.methods.perturb import baseline_embedding

    params = {"steps": 32, "method": method, "baseline": baseline, "internal_batch_size": batch}
    seen = []
    out, enc, label = run(minilm_rt, "integrated_gradients", params, progress=seen.append)
    x = minilm_rt.embed(enc)
    base = baseline_embedding(minilm_rt, enc, baseline)
    if baseline == "mask":
        assert enc.input_ids[0, 1] != minilm_rt.mask_token_id
        assert torch.equal(base[0, 0], x[0, 0]) and not torch.equal(base[0, 1], x[0, 1])
    ig = IntegratedGradients(forward_fn(minilm_rt, enc))
    theirs, delta = ig.attribute(x, baselines=base, target=label, n_steps=32, method=method,
                                 internal_batch_size=32, return_convergence_delta=True)
    close(out.tensors["attribution"], theirs[0])
    close(out.tensors["scores"], theirs[0].sum(-1))
    assert out.json["delta"] == pytest.approx(float(delta), abs=1e-4)
    assert len(seen) == 1 + -(-32 // batch)


def test_integrated_gradients_completeness(minilm_rt):
    """A known answer: with enough steps the attributions sum to S(x) − S(x')."""
    out, enc, label = run(minilm_rt, "integrated_gradients", {"steps": 64, "baseline": "mask"})
    with torch.no_grad():
        logit = minilm_rt.forward(minilm_rt.embed(enc), enc).logits[0, label]
    assert abs(out.json["delta"]) < 0.02 * abs(float(logit))


def test_smoothgrad_equals_captum_noise_tunnel(minilm_rt):
    """Same noise: Captum draws it from the global generator, ours from a generator seeded the same way."""
    from captum.attr import NoiseTunnel, Saliency

    params = {"samples": 8, "noise": 0.15, "batch_size": 4}
    out, enc, label = run(minilm_rt, "smoothgrad", params, seed=5)
    x = minilm_rt.embed(enc)
    torch.manual_seed(5)
    tunnel = NoiseTunnel(Saliency(forward_fn(minilm_rt, enc)))
    theirs = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=8, nt_samples_batch_size=8,
                              stdevs=out.json["sigma"], target=label, abs=True)
    close(out.tensors["scores"], theirs[0].mean(-1))
