"""The bilstm-rt adapter and bundle: layer states equal a fresh nn.LSTM stack fed the same weights, padding
invariance, upto, held-out accuracy, describe, and the gradient method."""
from __future__ import annotations

import pytest
import torch

from tests.unit import native_checks
from worker.data.rt import rt_split
from worker.models import load_model


@pytest.fixture(scope="module")
def bilstm():
    return load_model("bilstm-rt", device="cpu").load()


def test_describe(bilstm):
    info = bilstm.describe()
    assert info["layers"] == ["embeddings", "lstm.1", "lstm.2", "lstm.3", "lstm.4", "pool", "output"]
    assert info["labels"] == ["negative", "positive"] and info["attention"] == []
    assert "gradient" in info["methods"]


def test_layers_equal_a_fresh_lstm_stack(bilstm):
    """lstm.k = the top layer of an nn.LSTM(num_layers=k, bidirectional) holding the adapter's first k layers."""
    m = bilstm.module
    enc = bilstm.encode({"text": native_checks.TEXTS[0]})
    x = bilstm.embed(enc)
    trace = bilstm.forward(x, enc, capture=bilstm.layer_names)
    hidden = m.lstm[0].hidden_size
    for k in range(1, len(m.lstm) + 1):
        stack = torch.nn.LSTM(x.shape[-1], hidden, num_layers=k, bidirectional=True, batch_first=True)
        with torch.no_grad():
            for layer in range(k):
                for name, value in m.lstm[layer].named_parameters():
                    getattr(stack, name.replace("_l0", f"_l{layer}")).copy_(value)
            out, _ = stack(x)
        torch.testing.assert_close(trace.layers[f"lstm.{k}"], out)
    pooled = out[0].max(0).values
    torch.testing.assert_close(trace.layers["pool"][0], pooled)
    torch.testing.assert_close(trace.logits[0], m.output.weight @ pooled + m.output.bias)


def test_padding_and_upto(bilstm):
    native_checks.padded_equals_alone(bilstm, [{"text": t} for t in native_checks.TEXTS])
    native_checks.upto_stops_there(bilstm, native_checks.TEXTS[0], "lstm.2", bilstm.module.lstm[2])


def test_held_out_accuracy(bilstm):
    assert native_checks.held_out_accuracy(bilstm, rt_split("test")[:200]) >= 0.68


def test_gradient_method(bilstm):
    native_checks.gradient_explains(bilstm, native_checks.TEXTS[0])
