"""gradient and smoothgrad against independent computations: autograd on the raw HF model + head, and Captum."""
from __future__ import annotations

import marshmallow as ma
import pytest
import torch
from safetensors.torch import load_file

from worker.methods import Cancelled, registry
from worker.methods.base import Target

SENTENCE = "an utterly charming , unpretentious little film that never overstays its welcome ."


def run(adapter, method, text=SENTENCE, params=None, seed=0, progress=lambda f: None, score="logit"):
    entry = registry()[method]
    enc = adapter.encode({"text": text})
    with torch.no_grad():
        logits = adapter.forward(adapter.embed(enc), enc).logits
    target = Target(logits.argmax(-1), score)
    return entry.run(adapter, enc, target, entry.params().load(params or {}), progress=progress, seed=seed), enc


def hand_gradient(raw_encoder, head_file, head_spec, input_ids, attention_mask, label, score="logit"):
    """∂S/∂(word embeddings) with transformers + the head's tensors written out here, not via Lantern code."""
    weights = load_file(str(head_file))
    emb = raw_encoder.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    hidden = raw_encoder(inputs_embeds=emb, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    z = (pooled - weights["mean"]) / weights["std"]
    if head_spec.get("hidden_size"):
        a = torch.nn.functional.gelu(z @ weights["fc1.weight"].T + weights["fc1.bias"])
        logits = a @ weights["fc2.weight"].T + weights["fc2.bias"]
    else:
        logits = z @ weights["fc.weight"].T + weights["fc.bias"]
    if score == "probability":
        logits = logits.softmax(-1)
    (grad,) = torch.autograd.grad(logits[0, label], emb)
    return grad[0]


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_gradient_equals_hand_computation(minilm_rt, raw_encoder, score):
    result, enc = run(minilm_rt, "gradient", score=score)
    spec = minilm_rt.spec
    with torch.no_grad():
        label = int(minilm_rt.forward(minilm_rt.embed(enc), enc).logits.argmax())
    grad = hand_gradient(raw_encoder, spec.path / spec.head["file"], spec.head, enc.input_ids, enc.attention_mask,
                         label, score)
    T = len(enc.tokens[0])
    assert result.tensors["gradient"].shape == (T, 384) and result.tensors["scores"].shape == (T,)
    torch.testing.assert_close(result.tensors["gradient"], grad, rtol=0, atol=1e-6)
    expected = grad.abs().mean(-1)
    torch.testing.assert_close(result.tensors["scores"], expected, rtol=0, atol=1e-6)
    assert result.json["scores"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert result.figures[""]().startswith(b"\x89PNG\r\n\x1a\n")  # figures render on demand


def test_gradient_equals_captum_saliency(minilm_rt):
    from captum.attr import Saliency

    result, enc = run(minilm_rt, "gradient")
    x = minilm_rt.embed(enc)
    with torch.no_grad():
        label = int(minilm_rt.forward(x, enc).logits.argmax())
    saliency = Saliency(lambda inputs: minilm_rt.forward(inputs, enc).logits)
    attribution = saliency.attribute(x.clone().requires_grad_(True), target=label, abs=True)
    torch.testing.assert_close(result.tensors["scores"], attribution[0].mean(-1), rtol=0, atol=1e-6)


def test_gradient_l2_aggregate(minilm_rt):
    result, _ = run(minilm_rt, "gradient", params={"aggregate": "l2"})
    torch.testing.assert_close(result.tensors["scores"], result.tensors["gradient"].norm(dim=-1))


def test_smoothgrad_with_zero_noise_equals_gradient(minilm_rt):
    gradient, _ = run(minilm_rt, "gradient")
    smooth, _ = run(minilm_rt, "smoothgrad", params={"noise": 0.0, "samples": 5, "batch_size": 2})
    torch.testing.assert_close(smooth.tensors["scores"], gradient.tensors["scores"], rtol=0, atol=1e-6)
    torch.testing.assert_close(smooth.tensors["gradient"], gradient.tensors["gradient"], rtol=0, atol=1e-6)


def test_smoothgrad_is_reproducible_by_seed(minilm_rt):
    params = {"samples": 6, "batch_size": 4, "noise": 0.2}
    first, _ = run(minilm_rt, "smoothgrad", params=params, seed=7)
    torch.manual_seed(123)  # the global RNG does not matter
    again, _ = run(minilm_rt, "smoothgrad", params=params, seed=7)
    other, _ = run(minilm_rt, "smoothgrad", params=params, seed=8)
    assert torch.equal(first.tensors["scores"], again.tensors["scores"])
    assert not torch.equal(first.tensors["scores"], other.tensors["scores"])
    gradient, _ = run(minilm_rt, "gradient")
    assert not torch.allclose(first.tensors["scores"], gradient.tensors["scores"])
    assert first.json["samples"] == 6 and first.json["sigma"] > 0


def test_smoothgrad_batching_does_not_change_the_result(minilm_rt):
    a, _ = run(minilm_rt, "smoothgrad", params={"samples": 6, "batch_size": 6}, seed=3)
    b, _ = run(minilm_rt, "smoothgrad", params={"samples": 6, "batch_size": 4}, seed=3)
    torch.testing.assert_close(a.tensors["scores"], b.tensors["scores"], rtol=0, atol=1e-5)


def test_smoothgrad_reports_progress_and_can_be_cancelled(minilm_rt):
    seen = []
    run(minilm_rt, "smoothgrad", params={"samples": 5, "batch_size": 2}, progress=seen.append)
    assert seen == [0.0, 1 / 3, 2 / 3, 1.0]

    def cancel(fraction):
        if fraction > 0:
            raise Cancelled("job")

    with pytest.raises(Cancelled):
        run(minilm_rt, "smoothgrad", params={"samples": 50, "batch_size": 2}, progress=cancel)


@pytest.mark.parametrize("params", [{"samples": 0}, {"samples": 10**6}, {"noise": float("nan")},
                                    {"noise": float("inf")}, {"noise": -0.1}, {"batch_size": 0},
                                    {"samples": 2.5}, {"aggregate": "max"}, {"colour": "red"}])
def test_smoothgrad_params_are_validated(params):
    with pytest.raises(ma.ValidationError):
        registry()["smoothgrad"].params().load(params)


def test_param_defaults():
    assert registry()["smoothgrad"].params().load({}) == {"samples": 25, "noise": 0.1, "batch_size": 16,
                                                          "aggregate": "mean_abs", "stability": False}
    assert registry()["gradient"].params().load({}) == {"aggregate": "mean_abs"}
    with pytest.raises(ma.ValidationError):
        registry()["gradient"].params().load({"steps": 3})
