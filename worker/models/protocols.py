"""What an adapter promises when it declares a capability (:class:`worker.capabilities.Capability`): the methods it
then has and the names its ``forward`` captures. A method reaches them through :func:`offering`, which refuses an
adapter that does not declare the capability, so no method tests adapter classes.

- ``head``: ``labels`` (class names in logit order) and ``Trace.logits`` B×C; nothing more.
- ``self_attention``: ``attention_names`` are ``attention.1`` … ``attention.N``, each captured as B×heads×T×T weights
  after softmax (rows = queries, columns = keys).
- ``pair_alignment``: ``forward`` captures ``align`` (B×2×n×m: premise → hypothesis rows sum to 1, hypothesis →
  premise columns sum to 1) and ``align.energy`` (B×n×m), and :class:`PairAlignment`.
- ``lstm_gates``: ``gate_names`` ``<lstm>.<direction>.<gate>`` captured as B×T×d, ``forward(..., gate_offsets=)``
  adds B×T×d offsets to the gates inside the recurrence, and :class:`LSTMGates`.
- ``next_word``: ``attention_names == ["history"]`` (B×1×T×T, row t = the weights over positions 0..t), ``labels``
  = the vocabulary, ``forward`` captures ``output`` (B×T×V next-word logits), and :class:`NextWord`.
- ``lrp_rules``: :class:`LRPRules`.
- ``embedding_table``: :class:`EmbeddingTable`.
- ``sequence_output``: the layer ``output`` has one row per position (B×T×…), so sigma's timestamp mode reads it.
- ``generation``: :class:`GenerativeAdapter` (worker/methods/generation.py's steps read logits through it).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar, cast

import torch

from worker.capabilities import Capability
from worker.models.base import Adapter, Encoding, InputError, Trace


class ScoreTarget(Protocol):
    """The class explained per item and the score S(y) of it (``worker.methods.base.Target``)."""

    index: torch.Tensor

    def __call__(self, logits: torch.Tensor) -> torch.Tensor: ...


class PairAlignment(Protocol):
    name: str

    def sentence_tokens(self, encoding: Encoding, i: int = 0) -> tuple[list[int], list[int]]:
        """The token indices of item i's premise and of its hypothesis (the rows and columns of ``align``)."""
        ...


class LSTMGates(Protocol):
    name: str
    gate_names: list[str]

    @property
    def gate_size(self) -> int:
        """d: the size of each gate signal (B×T×d)."""
        ...

    def forward(self, x: torch.Tensor, encoding: Encoding, capture: Iterable[str] = (), upto: str | None = None,
                gate_offsets: dict[str, torch.Tensor] | None = None) -> Trace: ...


class NextWord(Protocol):
    end_of_text: str  # the vocabulary's end-of-sentence token: generation stops after it

    def generate(self, encoding: Encoding, n: int) -> list[str]:
        """Up to n words greedily generated after item 0's text (deterministic)."""
        ...

    def extend(self, encoding: Encoding, words: list[str]) -> Encoding:
        """Item 0 with `words` (vocabulary tokens) appended."""
        ...

    def allowed(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits with the tokens greedy decoding never picks at -inf."""
        ...


class LRPRules(Protocol):
    def lrp_relevance(self, x: torch.Tensor, mask: torch.Tensor, target: ScoreTarget, epsilon: float,
                      encoding: Encoding | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LRP (the adapter's rules, ε for linear layers) from the target's score S(y) down to the input embeddings x
        (B×T×K; mask B×T bool, real tokens; `encoding` for what else the model reads, e.g. token types):
        (relevance B×T×K, zero at padding; S(y) B; the logits B×C of the same pass)."""
        ...


class GenerativeAdapter(Protocol):
    @property
    def vocab_size(self) -> int:
        """V: the width of the logits."""
        ...

    def sequence_logits(self, x: torch.Tensor, positions: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """Next-token logits at `positions` only (n for every row, or B×n: each row's own) from embeddings x
        (B×T×K: rows of one sequence or its first tokens, no padding, whose first `prompt_length` tokens are the
        prompt): B×n×V, never B×T×V."""
        ...


class EmbeddingTable(Protocol):
    def embedding_table(self) -> torch.Tensor:
        """The input embedding table without its padding row (N×K)."""
        ...


Offered = TypeVar("Offered")


def offering(adapter: Adapter, capability: Capability, protocol: Callable[..., Offered], method: str) -> Offered:
    """`adapter` as `protocol`, which it promises by declaring `capability`; InputError when it does not."""
    if capability not in adapter.capabilities:
        raise InputError(f"method {method!r} does not apply to {adapter.name}: it needs {capability}, "
                         f"which {adapter.name} does not offer")
    return cast(Offered, adapter)


def without_padding(table: torch.nn.Embedding) -> torch.Tensor:
    """An ``nn.Embedding``'s rows without its padding row, detached (``embedding_table`` of the adapters)."""
    keep = torch.ones(table.num_embeddings, dtype=torch.bool)
    if table.padding_idx is not None:
        keep[table.padding_idx] = False
    return table.weight.detach()[keep]

