"""What every method on a generative model shares (worker/methods/generation.py explains the job): the sequence and
what each step scores (:class:`Steps`), a method's outcome (:class:`StepResult`), and the S×T score rows as JSON.
Not a method itself; a module of its own so that the methods of ``generation.py`` and ``generation_methods.py`` both
build on it without importing each other in a circle."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.capabilities import Capability
from worker.models.base import Encoding
from worker.models.protocols import GenerativeAdapter, offering

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

    @property
    def positions(self) -> torch.Tensor:
        """S: the positions P−1 … P+S−2 whose next-token logits score the steps (what ``sequence_logits`` asks
        for: only these, never T×V)."""
        return torch.arange(self.count, device=self.targets.device) + (self.prompt_length - 1)

    def logits(self, adapter: Any, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits of x (N copies of the sequence, or of its first tokens): N×S×V at every step's position
        (`rows` None), or N×V with row r at the position of step rows[r] (what :meth:`of` reads)."""
        lm = _generative(adapter)
        if rows is None:
            return lm.sequence_logits(x, self.positions, self.prompt_length)
        return lm.sequence_logits(x, self.positions[rows].view(-1, 1), self.prompt_length)[:, 0]

    def of(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """S_s of each row (R) from its logits (R×V at its step's position), row r scoring step rows[r]."""
        values = transform(logits, self.score)
        out = values.gather(-1, self.targets[rows].view(-1, 1).to(values.device)).squeeze(-1)
        if self.contrast is not None:
            out = out - values.gather(-1, self.contrast[rows].view(-1, 1).to(values.device)).squeeze(-1)
        return out

    def each(self, logits: torch.Tensor) -> torch.Tensor:
        """S_s of every step for each of N copies of the whole sequence (logits N×S×V at :attr:`positions`): N×S.
        Causality makes one pass over a copy serve every step."""
        S = self.count
        values = transform(logits, self.score)  # N×S×V

        def pick(ids: torch.Tensor) -> torch.Tensor:
            return values.gather(-1, ids.to(values.device).view(1, S, 1).expand(len(values), -1, -1)).squeeze(-1)

        return pick(self.targets) - (pick(self.contrast) if self.contrast is not None else 0.0)

    def reads(self, s: int) -> int:
        """How many tokens step s reads (P+s): its logits are at position P+s−1."""
        return self.prompt_length + s

    def reads_group(self, s: int, group: Sequence[int]) -> bool:
        """Whether step s reads every token of a word (token indices, in order): a prompt word always, the
        generated token at P+s' from step s'+1 on."""
        return group[-1] < self.reads(s)

    def prefixes(self) -> Encoding:
        """S items, item s the first P+s tokens (what step s reads; its last token's logits score y_s), padded on
        the right: faithfulness of every step in shared passes."""
        one, S = self.encoding, self.count
        lengths = [self.reads(s) for s in range(S)]
        width = max(lengths)
        real = torch.arange(width) < torch.tensor(lengths).view(-1, 1)
        return Encoding(input_ids=one.input_ids[:, :width].repeat(S, 1),
                        attention_mask=real.long().to(one.attention_mask.device),
                        tokens=[one.tokens[0][:n] for n in lengths], special=[one.special[0][:n] for n in lengths],
                        words=[[g for g in one.words[0] if self.reads_group(s, g)] for s in range(S)],
                        offsets=[one.offsets[0][:n] for n in lengths], segments=[one.segments[0][:n] for n in lengths],
                        inputs=one.inputs * S)

    def rows_per_pass(self, adapter: Any, requested: int) -> int:
        """Copies of the sequence per pass of :meth:`each`: `requested`, fewer when their N×S×V logits (and the
        softmax of them) would pass ``LOGIT_BUDGET`` values (S+1: an encoder–decoder without ``logits_to_keep``
        computes its whole decoder side)."""
        return max(1, min(requested, LOGIT_BUDGET // ((self.count + 1) * _generative(adapter).vocab_size)))


def _generative(adapter: Any) -> GenerativeAdapter:
    return offering(adapter, Capability.GENERATION, GenerativeAdapter, "generation")


# values of next-token logits per pass (256 MiB in float32; the score's softmax doubles it): GPT-2's 50,257 tokens
# × 32 steps → 41 copies per pass
LOGIT_BUDGET = 1 << 26


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
