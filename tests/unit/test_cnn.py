"""The cnn-rt adapter and bundle: feature maps equal F.conv1d by hand, padding invariance, upto, held-out accuracy,
describe, and the gradient method."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.unit import native_checks
from worker.data.rt import rt_split
from worker.models import load_model


@pytest.fixture(scope="module")
def cnn():
    return load_model("cnn-rt", device="cpu").load()


def test_describe(cnn):
    info = cnn.describe()
    assert info["layers"] == ["embeddings", "conv.k1", "conv.k3", "conv.k5", "conv.k7", "pool", "output"]
    assert info["labels"] == ["negative", "positive"]


def test_maps_equal_conv1d_by_hand(cnn):
    """conv.kw[t] = relu(b + Σ_j W[:, :, j] · x[t + j - w//2]) with zeros outside the sentence."""
    m = cnn.module
    enc = cnn.encode({"text": native_checks.TEXTS[2]})
    x = cnn.embed(enc)
    trace = cnn.forward(x, enc, capture=cnn.layer_names)
    pooled = []
    for width in (1, 3, 5, 7):
        conv = m.conv[f"k{width}"]
        expected = F.relu(F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=width // 2)).transpose(1, 2)
        torch.testing.assert_close(trace.layers[f"conv.k{width}"], expected)
        pooled.append(expected[0].max(0).values)
    t, half = 4, 3  # one window written out in full, for width 7
    window = torch.cat([torch.zeros(max(0, half - t), x.shape[2]), x[0, max(0, t - half): t + half + 1]])
    by_hand = F.relu(m.conv["k7"].bias + torch.einsum("ckj,jk->c", m.conv["k7"].weight, window))
    torch.testing.assert_close(trace.layers["conv.k7"][0, t], by_hand)
    torch.testing.assert_close(trace.layers["pool"][0], torch.cat(pooled))
    torch.testing.assert_close(trace.logits[0], m.output.weight @ torch.cat(pooled) + m.output.bias)


def test_padding_and_upto(cnn):
    native_checks.padded_equals_alone(cnn, [{"text": t} for t in native_checks.TEXTS])
    native_checks.upto_stops_there(cnn, native_checks.TEXTS[0], "conv.k3", cnn.module.conv["k5"])


def test_held_out_accuracy(cnn):
    assert native_checks.held_out_accuracy(cnn, rt_split("test")[:200]) >= 0.68


def test_gradient_method(cnn):
    native_checks.gradient_explains(cnn, native_checks.TEXTS[1])
