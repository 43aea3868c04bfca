"""The BiLSTM classifier adapter (Guan et al. 2019 §4.2, scaled down): word embeddings → L stacked bidirectional
LSTM layers → max-pool over the real tokens → linear logits.

Layers (docs/api.md, layer names): ``embeddings`` (x, B×T×K), ``lstm.1`` … ``lstm.L`` (B×T×2H: forward and backward states
concatenated, as ``nn.LSTM`` returns them; zeros at padded positions), ``pool`` (B×2H, the max over real tokens of
``lstm.L``), ``output`` (B×C logits). Each layer is its own ``nn.LSTM`` run on packed sequences, so padding never
reaches a real position (the backward direction starts at each item's last real token).

``config["model"]``: ``embedding_size``, ``hidden_size`` (per direction), ``layers``, ``dropout`` (training only).

LRP rules (the ``lrp_rules`` capability): the LSTM rules of Arras et al. 2017 in every layer and direction
(:func:`worker.models.relevance.lstm`), winner-takes-all through the max-pool, the ε-rule on the output layer.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from worker.capabilities import Capability
from worker.models import relevance
from worker.models.base import Encoding
from worker.models.native import NativeAdapter, masked_max, sequence_lengths
from worker.models.protocols import ScoreTarget


def run_packed(lstm: nn.LSTM, x: torch.Tensor, mask: torch.Tensor, state=None):
    """An nn.LSTM over the real tokens of each item: B×T×H outputs (zeros at padding) and the final (h, c)."""
    packed = pack_padded_sequence(x, sequence_lengths(mask), batch_first=True, enforce_sorted=False)
    # cuDNN's LSTM backward needs training mode; these models run in eval mode, so gradients take the native kernel
    with torch.backends.cudnn.flags(enabled=not (x.is_cuda and torch.is_grad_enabled())):
        out, final = lstm(packed, state)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], final


class BiLSTMClassifier(nn.Module):
    def __init__(self, vocab_size: int, classes: int, embedding_size: int, hidden_size: int, layers: int,
                 dropout: float = 0.0):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_size, padding_idx=0)
        self.lstm = nn.ModuleList(
            nn.LSTM(embedding_size if k == 0 else 2 * hidden_size, hidden_size, batch_first=True, bidirectional=True)
            for k in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(2 * hidden_size, classes)

    def steps(self, x: torch.Tensor, mask: torch.Tensor, ops: relevance.Ops = relevance.PLAIN
              ) -> Iterator[tuple[str, torch.Tensor]]:
        """The layers in order; with ``ops`` = :class:`~worker.models.relevance.Rules` the LSTMs run under the LSTM
        rules (same values, LRP's backward). The output layer's ε-rule is the relevance seed's."""
        yield "embeddings", x
        hidden = x
        for k, lstm in enumerate(self.lstm, 1):
            if isinstance(ops, relevance.Rules):
                hidden = relevance.lstm(lstm, hidden, mask, ops.eps)
            else:
                hidden, _ = run_packed(lstm, self.dropout(hidden), mask)
            yield f"lstm.{k}", hidden
        pooled = masked_max(hidden, mask)
        yield "pool", pooled
        yield "output", self.output(self.dropout(pooled))

    def lrp_logits(self, x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
        """The logits under the LRP rules (eval mode): the same values as ``steps``, a backward that carries them."""
        return dict(self.steps(x, mask, relevance.Rules(eps)))["output"]


class BiLSTMAdapter(NativeAdapter):
    kind = "bilstm"
    offers = NativeAdapter.offers | {Capability.LRP_RULES}

    @staticmethod
    def architecture(h: dict[str, Any], vocab_size: int, classes: int) -> BiLSTMClassifier:
        return BiLSTMClassifier(vocab_size, classes, int(h["embedding_size"]), int(h["hidden_size"]), int(h["layers"]),
                                float(h.get("dropout", 0.0)))

    def step_names(self) -> list[str]:
        return ["embeddings", *(f"lstm.{k}" for k in range(1, int(self.hyper["layers"]) + 1)), "pool", "output"]

    def lrp_relevance(self, x: torch.Tensor, mask: torch.Tensor, target: ScoreTarget, epsilon: float,
                      encoding: Encoding | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``lrp_rules`` capability (module docstring)."""
        module = self.module
        return relevance.input_relevance(x, lambda e: module.lrp_logits(e, mask, epsilon), target, epsilon)
