"""The CNN classifier adapter (Kim 2014; Guan et al. 2019 §5.2.1): word embeddings → four parallel 1-d convolutions of
kernel widths 1, 3, 5, 7 (ReLU) → max-pool over the real tokens of each → concatenated → linear logits.

Layers (DESIGN §4): ``embeddings`` (x, B×T×K), ``conv.k1``, ``conv.k3``, ``conv.k5``, ``conv.k7`` (each B×T×C:
ReLU(conv1d) with 'same' zero padding, so position t is centred on word t; zeros at padded positions), ``pool``
(B×4C: per map the max over real tokens, in the order k1, k3, k5, k7), ``output`` (B×C logits). The four maps are
independent "layers" (they all read x); ``upto="conv.k3"`` computes k1 and k3 only. Padded positions of x are zeroed
before the convolutions, so a real token next to the padding sees exactly the 'same' padding it sees alone.

``config["model"]``: ``embedding_size``, ``channels`` (per width), ``widths`` ([1, 3, 5, 7]), ``dropout``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from worker.models.native import NativeAdapter, masked_max

WIDTHS = (1, 3, 5, 7)


class KimCNN(nn.Module):
    def __init__(self, vocab_size: int, classes: int, embedding_size: int, channels: int,
                 widths: tuple[int, ...] = WIDTHS, dropout: float = 0.0):
        super().__init__()
        if any(w % 2 == 0 for w in widths):
            raise ValueError("kernel widths must be odd so that 'same' padding centres each window on its word")
        self.embeddings = nn.Embedding(vocab_size, embedding_size, padding_idx=0)
        self.conv = nn.ModuleDict({f"k{w}": nn.Conv1d(embedding_size, channels, w, padding=w // 2) for w in widths})
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(len(widths) * channels, classes)

    def steps(self, x: torch.Tensor, mask: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        yield "embeddings", x
        real = mask.unsqueeze(-1).to(x.dtype)
        columns = (self.dropout(x) * real).transpose(1, 2)  # B×K×T
        pooled = []
        for key, conv in self.conv.items():
            feature_map = torch.relu(conv(columns)).transpose(1, 2) * real  # B×T×C
            yield f"conv.{key}", feature_map
            pooled.append(masked_max(feature_map, mask))
        pooled = torch.cat(pooled, -1)
        yield "pool", pooled
        yield "output", self.output(self.dropout(pooled))


class CNNAdapter(NativeAdapter):
    kind = "cnn"

    @staticmethod
    def architecture(h: dict[str, Any], vocab_size: int, classes: int) -> KimCNN:
        return KimCNN(vocab_size, classes, int(h["embedding_size"]), int(h["channels"]),
                      tuple(int(w) for w in h.get("widths", WIDTHS)), float(h.get("dropout", 0.0)))

    def step_names(self) -> list[str]:
        return ["embeddings", *(f"conv.k{int(w)}" for w in self.hyper.get("widths", WIDTHS)), "pool", "output"]
