"""The transformer-rt adapter and bundle: attention weights and block outputs recomputed by hand from the weights,
positions from the sinusoid formula, padding invariance, upto, held-out accuracy, describe, the gradient method."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.unit import native_checks
from worker.data.rt import rt_split
from worker.models import load_model


@pytest.fixture(scope="module")
def transformer():
    return load_model("transformer-rt", device="cpu").load()


def test_describe_and_cls(transformer):
    info = transformer.describe()
    assert info["layers"] == ["embeddings", "layer.1", "layer.2", "layer.3", "pool", "output"]
    assert info["attention"] == ["attention.1", "attention.2", "attention.3"]
    enc = transformer.encode({"text": "Dull."})
    assert enc.tokens[0] == ["<cls>", "dull", "."] and enc.special[0] == [True, False, False]


def by_hand(block, h: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pre-LN block on T×d states: (attention heads×T×T, output T×d), head by head."""
    d = h.shape[-1]
    dh = d // heads
    a = F.layer_norm(h, (d,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    w, b = block.qkv.weight, block.qkv.bias
    weights, contexts = [], []
    for j in range(heads):
        rows = slice(j * dh, (j + 1) * dh)
        q = a @ w[rows].T + b[rows]
        k = a @ w[d:][rows].T + b[d:][rows]
        v = a @ w[2 * d:][rows].T + b[2 * d:][rows]
        weight = torch.softmax(q @ k.T / math.sqrt(dh), -1)
        weights.append(weight)
        contexts.append(weight @ v)
    h = h + torch.cat(contexts, -1) @ block.proj.weight.T + block.proj.bias
    f = F.layer_norm(h, (d,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    h = h + F.gelu(f @ block.ff1.weight.T + block.ff1.bias) @ block.ff2.weight.T + block.ff2.bias
    return torch.stack(weights), h


def test_layers_and_attention_by_hand(transformer):
    m = transformer.module
    enc = transformer.encode({"text": native_checks.TEXTS[0]})
    x = transformer.embed(enc)
    trace = transformer.forward(x, enc, capture=transformer.step_order)
    length, d = x.shape[1], m.project.out_features
    positions = torch.tensor([[math.sin(p / 10000 ** (i / d)) if i % 2 == 0 else math.cos(p / 10000 ** ((i - 1) / d))
                               for i in range(d)] for p in range(length)])
    h = x[0] @ m.project.weight.T + m.project.bias + positions
    torch.testing.assert_close(trace.layers["embeddings"][0], h)
    heads = int(transformer.hyper["heads"])
    for k, block in enumerate(m.layer, 1):
        attention, h = by_hand(block, h, heads)
        torch.testing.assert_close(trace.attention[f"attention.{k}"][0], attention)
        torch.testing.assert_close(trace.layers[f"layer.{k}"][0], h)
        torch.testing.assert_close(attention.sum(-1), torch.ones(heads, length))
    pooled = F.layer_norm(h[0], (d,), m.norm.weight, m.norm.bias, m.norm.eps)
    torch.testing.assert_close(trace.layers["pool"][0], pooled)
    torch.testing.assert_close(trace.logits[0], m.output.weight @ pooled + m.output.bias)


def test_padding_and_upto(transformer):
    native_checks.padded_equals_alone(transformer, [{"text": t} for t in native_checks.TEXTS])
    native_checks.upto_stops_there(transformer, native_checks.TEXTS[0], "layer.1", transformer.module.layer[1])


def test_held_out_accuracy(transformer):
    assert native_checks.held_out_accuracy(transformer, rt_split("test")[:200]) >= 0.65


def test_gradient_method(transformer):
    native_checks.gradient_explains(transformer, native_checks.TEXTS[2])
