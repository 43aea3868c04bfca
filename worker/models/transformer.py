"""The Transformer encoder classifier adapter (Guan et al. 2019 §4.3, scaled down): a ``<cls>`` token + word
embeddings → linear projection to d + sinusoidal positions → N pre-LayerNorm self-attention blocks → final LayerNorm
→ first-token pooling → linear logits.

Layers (docs/api.md, layer names): ``embeddings`` (B×T×d: the projected embeddings plus positions, the input of block 1, as the
Hugging Face adapter's ``embeddings`` is the input of its first layer), ``layer.1`` … ``layer.N`` (B×T×d, block
outputs; zeros at padded positions), ``pool`` (B×d: the final LayerNorm of the ``<cls>`` position), ``output`` (B×C
logits). Attention ``attention.1`` … ``attention.N``: B×heads×T×T, softmax(QKᵀ/√d_head) with padded keys at exactly 0
(computed here, not by a fused kernel, so the weights are the ones used). x, what gradients and sigma reach, is the
B×T×K word embedding before the projection.

Block k: h ← h + W_o·attention(LN₁(h)) ; h ← h + W₂·gelu(W₁·LN₂(h)). ``qkv`` projects to [Q | K | V] (d each; head j
uses columns j·d_head…(j+1)·d_head of each).

``config["model"]``: ``embedding_size``, ``d_model``, ``heads``, ``layers``, ``ff_size``, ``dropout``.

LRP rules (the ``lrp_rules`` capability): AttnLRP (Achtibat et al. 2024; :mod:`worker.models.relevance`): ε-rule on
every linear layer, identity rule through GELU and the LayerNorms' divisor, the uniform rule on QKᵀ and A·V, the
softmax's own gradient (AttnLRP's softmax rule). The sinusoidal positions and the biases absorb part of S(y).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from worker.capabilities import Capability
from worker.models import relevance
from worker.models.base import Encoding
from worker.models.native import NativeAdapter
from worker.models.protocols import ScoreTarget

CLS = "<cls>"


def sinusoid_positions(length: int, size: int, device=None) -> torch.Tensor:
    """T×d: sin on even, cos on odd dimensions (Vaswani et al. 2017)."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, size, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / size))
    table = torch.zeros(length, size, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: size // 2])
    return table


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, ff_size: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError("d_model must be a multiple of heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ff_size)
        self.ff2 = nn.Linear(ff_size, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, ops: relevance.Ops = relevance.PLAIN
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """h B×T×d, mask B×T bool -> (new h, attention B×heads×T×T). ``ops``: the plain operations or LRP's rules."""
        batch, length, d_model = h.shape
        qkv = ops.linear(self.qkv(ops.norm(h, self.norm1)))
        q, k, v = qkv.view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = ops.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        attention = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        context = ops.matmul(self.dropout(attention), v).transpose(1, 2).reshape(batch, length, d_model)
        h = h + self.dropout(ops.linear(self.proj(context)))
        inner = ops.act(nn.functional.gelu, ops.linear(self.ff1(ops.norm(h, self.norm2))))
        h = h + self.dropout(ops.linear(self.ff2(inner)))
        return h, attention


class TransformerClassifier(nn.Module):
    def __init__(self, vocab_size: int, classes: int, embedding_size: int, d_model: int, heads: int, layers: int,
                 ff_size: int, dropout: float = 0.0):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_size, padding_idx=0)
        self.project = nn.Linear(embedding_size, d_model)
        self.layer = nn.ModuleList(Block(d_model, heads, ff_size, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(d_model, classes)

    def steps(self, x: torch.Tensor, mask: torch.Tensor, ops: relevance.Ops = relevance.PLAIN
              ) -> Iterator[tuple[str, torch.Tensor]]:
        """The layers in order; with ``ops`` = :class:`~worker.models.relevance.Rules` the same values under
        AttnLRP's rules (the output layer's ε-rule is the relevance seed's)."""
        real = mask.unsqueeze(-1).to(x.dtype)
        h = (ops.linear(self.project(x)) + sinusoid_positions(x.shape[1], self.project.out_features, x.device)) * real
        yield "embeddings", h
        h = self.dropout(h)
        for k, block in enumerate(self.layer, 1):
            h, attention = block(h, mask, ops)
            h = h * real
            yield f"attention.{k}", attention
            yield f"layer.{k}", h
        pooled = ops.norm(h[:, 0], self.norm)
        yield "pool", pooled
        yield "output", self.output(self.dropout(pooled))

    def lrp_logits(self, x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
        """The logits under AttnLRP's rules (eval mode): the values of ``steps``, LRP's backward."""
        return dict(self.steps(x, mask, relevance.Rules(eps)))["output"]


class TransformerAdapter(NativeAdapter):
    kind = "transformer"
    offers = NativeAdapter.offers | {Capability.SELF_ATTENTION, Capability.LRP_RULES}

    @staticmethod
    def architecture(h: dict[str, Any], vocab_size: int, classes: int) -> TransformerClassifier:
        return TransformerClassifier(vocab_size, classes, int(h["embedding_size"]), int(h["d_model"]), int(h["heads"]),
                                     int(h["layers"]), int(h["ff_size"]), float(h.get("dropout", 0.0)))

    def step_names(self) -> list[str]:
        blocks = range(1, int(self.hyper["layers"]) + 1)
        return ["embeddings", *(n for k in blocks for n in (f"attention.{k}", f"layer.{k}")), "pool", "output"]

    def layout(self, text: str) -> list[tuple[str, bool, tuple[int, int], int]]:
        return [(CLS, True, (0, 0), 0), *super().layout(text)]

    def lrp_relevance(self, x: torch.Tensor, mask: torch.Tensor, target: ScoreTarget, epsilon: float,
                      encoding: Encoding | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``lrp_rules`` capability: AttnLRP (module docstring)."""
        module = self.module
        return relevance.input_relevance(x, lambda e: module.lrp_logits(e, mask, epsilon), target, epsilon)
