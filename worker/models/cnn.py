"""The CNN classifier adapter (Kim 2014; Guan et al. 2019 §5.2.1): word embeddings → four parallel 1-d convolutions of
kernel widths 1, 3, 5, 7 (ReLU) → max-pool over the real tokens of each → concatenated → linear logits.

Layers (docs/api.md, layer names): ``embeddings`` (x, B×T×K), ``conv.k1``, ``conv.k3``, ``conv.k5``, ``conv.k7`` (each B×T×C:
ReLU(conv1d) with 'same' zero padding, so position t is centred on word t; zeros at padded positions), ``pool``
(B×4C: per map the max over real tokens, in the order k1, k3, k5, k7), ``output`` (B×C logits). The four maps are
independent "layers" (they all read x); ``upto="conv.k3"`` computes k1 and k3 only. Padded positions of x are zeroed
before the convolutions, so a real token next to the padding sees exactly the 'same' padding it sees alone.

``config["model"]``: ``embedding_size``, ``channels`` (per width), ``widths`` ([1, 3, 5, 7]), ``dropout``.

LRP rules (the ``lrp_rules`` capability; Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance propagation:
an overview", §10.2.1 LRP-ε). Relevance starts on the target logit with the value S(y) (for ``score: probability |
log_probability`` the target logit's unit is given S(y) and the same rules redistribute it) and is propagated down
to the input embeddings x (T×K):

- Linear and Conv1d (ε-rule): R_j = a_j Σ_k w_jk R_k / stab(z_k), with z_k = Σ_j a_j w_jk + b_k (bias included)
  and stab(z) = z + ε·sign(z), sign(0) = +1 (Captum's ``EpsilonRule``). The conv's gradient gives Σ_k w_jk s_k
  (the "modified gradient" trick: one backward pass for the four widths and the whole batch).
- ReLU: relevance passes unchanged (R of a unit is R of its pre-activation).
- Max-pool over the real tokens: winner takes all, as an ε-rule layer whose only input is the winner:
  R_win = a_win · R_p / stab(p) (= R_p up to ε; a tie is won by the first position). Padding gets nothing.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from worker.capabilities import Capability
from worker.models.base import Encoding
from worker.models.native import NativeAdapter, masked_max
from worker.models.protocols import ScoreTarget

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


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z + ε·sign(z) with sign(0) = +1 (Captum's stabiliser)."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def relevance(module: KimCNN, x: torch.Tensor, mask: torch.Tensor, target: ScoreTarget,
              epsilon: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ε-LRP through a Kim CNN (eval mode: dropout is the identity; rules in the module docstring).

    x B×T×K input embeddings, mask B×T bool (real tokens) -> (R B×T×K, zero at padding; S(y) B, the relevance put on
    the target logit; logits B×C of the same pass).
    """
    real = mask.unsqueeze(1)  # B×1×T
    cols = (x.detach() * mask.unsqueeze(-1).to(x.dtype)).transpose(1, 2).requires_grad_(True)  # B×K×T
    with torch.enable_grad():
        zs = [conv(cols) for conv in module.conv.values()]  # B×C×T pre-activations, bias included
    pooled, winners = [], []
    for z in zs:
        a = torch.relu(z.detach()).masked_fill(~real, float("-inf"))
        p, win = a.max(-1)  # B×C: max over the real positions and its (first) position
        pooled.append(p)
        winners.append(win)
    p = torch.cat(pooled, -1)  # B×4C
    logits = module.output(p)
    start = target(logits)  # S(y), B
    index = target.index.to(logits.device).view(-1, 1)
    # Linear: R_p = p ⊙ Wᵀ s, with s = S(y) / stab(z_y) on the target logit and 0 elsewhere
    s = torch.zeros_like(logits).scatter_(1, index, (start / stabilize(logits.gather(1, index).squeeze(1),
                                                                         epsilon)).unsqueeze(1))
    r_pool = p * (s @ module.output.weight)
    # max-pool: R_win = a_win · R_p / stab(p) with a_win = p
    r_win = p * r_pool / stabilize(p, epsilon)
    # ReLU passes R; Conv1d: R_x = x ⊙ convᵀ(R_z / stab(z)) — one backward pass for all widths
    total, offset = torch.zeros((), dtype=x.dtype, device=x.device), 0
    for z, win in zip(zs, winners, strict=True):
        channels = z.shape[1]
        r = r_win[:, offset:offset + channels]
        offset += channels
        z_win = z.detach().gather(2, win.unsqueeze(-1)).squeeze(-1)
        scale = torch.zeros_like(z, requires_grad=False).scatter_(2, win.unsqueeze(-1),
                                                                  (r / stabilize(z_win, epsilon)).unsqueeze(-1))
        total = total + (z * scale).sum()
    (grad,) = torch.autograd.grad(total, cols)
    return (cols.detach() * grad).transpose(1, 2), start.detach(), logits.detach()


class CNNAdapter(NativeAdapter):
    kind = "cnn"
    offers = NativeAdapter.offers | {Capability.LRP_RULES}

    @staticmethod
    def architecture(h: dict[str, Any], vocab_size: int, classes: int) -> KimCNN:
        return KimCNN(vocab_size, classes, int(h["embedding_size"]), int(h["channels"]),
                      tuple(int(w) for w in h.get("widths", WIDTHS)), float(h.get("dropout", 0.0)))

    def step_names(self) -> list[str]:
        return ["embeddings", *(f"conv.k{int(w)}" for w in self.hyper.get("widths", WIDTHS)), "pool", "output"]

    def lrp_relevance(self, x: torch.Tensor, mask: torch.Tensor, target: ScoreTarget, epsilon: float,
                      encoding: Encoding | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``lrp_rules`` capability: :func:`relevance` through this model's layers."""
        return relevance(cast(KimCNN, self.module), x, mask, target, epsilon)
