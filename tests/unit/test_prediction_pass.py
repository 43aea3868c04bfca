"""`explain` takes ∂S/∂x at the input from its prediction pass for the methods that want it (gradient,
grad_x_input): they run no forward or backward of their own, and give what their own pass gives."""
from __future__ import annotations

import pytest
import torch

import worker.methods as engine
from worker.methods import explain, explain_batch, registry
from worker.methods.base import KnownGradient, Target

SENTENCE = "an utterly charming , unpretentious little film that never overstays its welcome ."
OTHER = "a dull , lifeless remake ."


class Counted:
    """Counts the adapter's forward passes and autograd backwards during a block (the adapter itself unchanged)."""

    def __init__(self, adapter, monkeypatch):
        self.forwards = self.backwards = 0
        forward, grad = adapter.forward, torch.autograd.grad

        def counted_forward(*args, **kwargs):
            self.forwards += 1
            return forward(*args, **kwargs)

        def counted_grad(*args, **kwargs):
            self.backwards += 1
            return grad(*args, **kwargs)

        monkeypatch.setattr(adapter, "forward", counted_forward)
        monkeypatch.setattr(torch.autograd, "grad", counted_grad)


def own_pass(adapter, method, text, score="logit"):
    """The method run as a caller without a kept pass runs it: its own forward and backward."""
    entry = registry()[method]
    enc = adapter.encode({"text": text})
    with torch.no_grad():
        index = adapter.forward(adapter.embed(enc), enc).logits.argmax(-1)
    return entry.run(adapter, enc, Target(index, score), entry.params().load({}))


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_gradient_methods_equal_their_own_pass(minilm_rt, score):
    ex = explain(minilm_rt, {"text": SENTENCE}, ["gradient", "grad_x_input"], score=score, faithfulness="none")
    for method, tensor in (("gradient", "gradient"), ("grad_x_input", "attribution")):
        alone = own_pass(minilm_rt, method, SENTENCE, score)
        assert ex.result["methods"][method]["scores"] == pytest.approx(alone.json["scores"], rel=1e-6, abs=1e-9)
        torch.testing.assert_close(ex.tensors[method][tensor], alone.tensors[tensor], rtol=1e-6, atol=1e-9)


def test_one_forward_and_one_backward_for_both(minilm_rt, monkeypatch):
    explain(minilm_rt, {"text": SENTENCE}, ["gradient"], faithfulness="none")  # warm: lazy loading out of the count
    counted = Counted(minilm_rt, monkeypatch)
    explain(minilm_rt, {"text": SENTENCE}, ["gradient", "grad_x_input"], faithfulness="none")
    assert (counted.forwards, counted.backwards) == (1, 1)  # was 3 forwards (prediction, each method) and 2 backwards


def test_batch_shares_the_prediction_pass(minilm_rt, monkeypatch):
    texts = [{"text": SENTENCE}, {"text": OTHER}]
    methods = ["gradient", "grad_x_input"]
    alone = [explain(minilm_rt, t, methods, faithfulness="none") for t in texts]
    counted = Counted(minilm_rt, monkeypatch)
    batch = explain_batch(minilm_rt, texts, methods, faithfulness="none")
    assert (counted.forwards, counted.backwards) == (1, 1)  # was 1 + 1 + 2 forwards (grad_x_input item by item)
    for one, many in zip(alone, batch, strict=True):
        for method in methods:
            assert many.result["methods"][method]["scores"] == pytest.approx(
                one.result["methods"][method]["scores"], rel=1e-5, abs=2e-6)  # padded batch vs alone: rounding


def test_other_methods_run_a_plain_prediction(minilm_rt, monkeypatch):
    made = []

    class Recorded(KnownGradient):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine, "KnownGradient", Recorded)
    explain(minilm_rt, {"text": SENTENCE}, ["occlusion"], faithfulness="none")
    assert not made
    explain(minilm_rt, {"text": SENTENCE}, ["occlusion", "gradient"], faithfulness="none")
    assert made == [1]  # the recording works: a gradient method makes one


def test_it_serves_only_its_input_and_target(minilm_rt):
    enc = minilm_rt.encode({"text": SENTENCE})
    x = minilm_rt.embed(enc).requires_grad_(True)
    with torch.enable_grad():
        logits = minilm_rt.forward(x, enc).logits
    known = KnownGradient(enc, x, logits, Target(torch.tensor([0])))
    assert known.serves(minilm_rt.encode({"text": SENTENCE}), Target(torch.tensor([0])))
    assert not known.serves(minilm_rt.encode({"text": OTHER}), Target(torch.tensor([0])))
    assert not known.serves(enc, Target(torch.tensor([1])))
    assert not known.serves(enc, Target(torch.tensor([0]), "probability"))
    own = registry()["gradient"].run(minilm_rt, enc, Target(torch.tensor([1]), known=known), {"aggregate": "mean_abs"})
    assert torch.equal(own.tensors["gradient"], own_pass_gradient(minilm_rt, enc, 1))  # another target: its own pass


def own_pass_gradient(adapter, enc, label):
    from worker.methods.gradient import input_gradient

    return input_gradient(adapter, adapter.embed(enc), enc, Target(torch.tensor([label])))[0]


def test_it_tells_apart_inputs_that_differ_only_in_segments():
    """ESIM's premise/hypothesis split lives in `segments` alone: the same token ids split elsewhere are another
    input."""
    from worker.models import load_model

    esim = load_model("esim-50")
    one = esim.encode({"premise": "A man plays", "hypothesis": "a guitar ."})
    other = esim.encode({"premise": "A man plays a", "hypothesis": "guitar ."})
    x = esim.embed(one).requires_grad_(True)
    with torch.enable_grad():
        logits = esim.forward(x, one).logits
    known = KnownGradient(one, x, logits, Target(torch.tensor([0])))
    assert known.serves(one, Target(torch.tensor([0])))
    assert not known.serves(other, Target(torch.tensor([0])))


def test_seconds_count_the_shared_pass(minilm_rt, monkeypatch):
    """A served method's `seconds` include the forward and backward it took from the prediction pass."""
    enc = minilm_rt.encode({"text": SENTENCE})
    x = minilm_rt.embed(enc).requires_grad_(True)
    with torch.enable_grad():
        logits = minilm_rt.forward(x, enc).logits
    assert KnownGradient(enc, x, logits, Target(torch.tensor([0])), forward_seconds=7.0).seconds >= 7.0

    class Slow(KnownGradient):  # a pass that took 7 s, as far as the clock of the result is concerned
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seconds = 7.0

    monkeypatch.setattr(engine, "KnownGradient", Slow)
    ex = explain(minilm_rt, {"text": SENTENCE}, ["gradient", "grad_x_input", "occlusion"], faithfulness="none")
    seconds = {name: part["seconds"] for name, part in ex.result["methods"].items()}
    assert seconds["gradient"] >= 7.0 and seconds["grad_x_input"] >= 7.0 and seconds["occlusion"] < 7.0
