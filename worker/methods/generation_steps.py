"""What every method on a generative model shares (worker/methods/generation.py explains the job): the sequence and
what each step scores (:class:`Steps`), a method's outcome (:class:`StepResult`), and the S×T score rows as JSON.
Not a method itself; a module of its own so that the methods of ``generation.py`` and ``generation_methods.py`` both
build on it without importing each other in a circle."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.models.base import Encoding

Progress = Callable[[float], None]
Figure = bytes | Callable[[], bytes]


@dataclass
class Steps:
    """The sequence to explain and what each step scores."""

    encoding: Encoding  # prompt + generated (or given) tokens, one item of P+S tokens
    prompt_length: int  # P
    targets: torch.Tensor  # S long: y_s, the token at position P+s
    contrast: torch.Tensor | None  # S long: b_s, or None
    score: str = "logit"
    seed: int = 0  # the job's seed (LIME's draws, sigma's noise)
    layers: Sequence[str] | None = None  # the request's `layers` (sigma)

    @property
    def count(self) -> int:
        return int(self.targets.shape[0])

    def of(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """S_s of each row (R) from its logits (R×T'×V), row r scoring step rows[r]."""
        at = logits[torch.arange(len(rows), device=logits.device), self.prompt_length - 1 + rows]  # R×V
        values = transform(at, self.score)
        out = values.gather(-1, self.targets[rows].view(-1, 1).to(values.device)).squeeze(-1)
        if self.contrast is not None:
            out = out - values.gather(-1, self.contrast[rows].view(-1, 1).to(values.device)).squeeze(-1)
        return out

    def each(self, logits: torch.Tensor) -> torch.Tensor:
        """S_s of every step for each of N copies of the whole sequence (logits N×T×V): N×S. Causality makes one
        pass over a copy serve every step."""
        P, S = self.prompt_length, self.count
        values = transform(logits[:, P - 1:P - 1 + S], self.score)  # N×S×V

        def pick(ids: torch.Tensor) -> torch.Tensor:
            return values.gather(-1, ids.to(values.device).view(1, S, 1).expand(len(values), -1, -1)).squeeze(-1)

        return pick(self.targets) - (pick(self.contrast) if self.contrast is not None else 0.0)

    def reads(self, s: int) -> int:
        """How many tokens step s reads (P+s): its logits are at position P+s−1."""
        return self.prompt_length + s


def transform(logits: torch.Tensor, score: str) -> torch.Tensor:
    if score == "probability":
        return logits.softmax(-1)
    if score == "log_probability":
        return logits.log_softmax(-1)
    return logits


@dataclass
class StepResult:
    """A method's outcome. A token-scoring method gives S×T ``scores`` (the job adds word scores, faithfulness and
    the steps × tokens figure); a per-layer method (sigma, activations) gives ``scores=None`` and its own document
    (``extra``) and figures."""

    scores: torch.Tensor | None  # S×T (values at unread positions are ignored)
    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any]
    title: str
    figures: dict[str, Figure] = field(default_factory=dict)  # "" -> <method>.png, "k" -> <method>-k.png


def masked_by_step(values: torch.Tensor, steps: Steps) -> list[list[float | None]]:
    """S×T scores as JSON rows: ``null`` where step s cannot read (positions ≥ P+s)."""
    rows = values.detach().double().cpu().tolist()
    return [[v if t < steps.reads(s) else None for t, v in enumerate(row)] for s, row in enumerate(rows)]
