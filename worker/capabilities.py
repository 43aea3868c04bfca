"""What a model adapter offers and what each explanation method needs: the one declaration that the model card's
``methods``, ``GET /v1/methods`` and request validation (at submit and in the worker) all read.

An adapter declares its capabilities (``Adapter.capabilities``: its class's ``offers``, plus ``head`` when it has
labels). A method's requirement is its line in :data:`METHODS`, which is also the method registry: the method
``<name>`` is ``METHOD`` in ``worker/methods/<name>.py``, listed in this order. A method applies to an adapter when
the adapter offers every capability of ``all_of`` and, if ``any_of`` is not empty, at least one of those (a method
with one view per kind of model, such as ``attention``).

This module imports nothing from the engine, so that adapters (``describe()``) and methods both read it without
importing each other.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Capability(StrEnum):
    """What an adapter can offer a method. The adapter-side contract of each (the methods the adapter then has, the
    names its ``forward`` captures) is in :mod:`worker.models.protocols`."""

    HEAD = "head"  # labels and logits: a target score S(y) to explain
    SELF_ATTENTION = "self_attention"  # token self-attention maps attention.1 … attention.N (B×heads×T×T)
    PAIR_ALIGNMENT = "pair_alignment"  # premise × hypothesis soft alignment and its energies (ESIM)
    LSTM_GATES = "lstm_gates"  # LSTM gate signals, with offsets added inside the recurrence (their saliency)
    NEXT_WORD = "next_word"  # a next-word language model: attention over the history, greedy generation
    LRP_RULES = "lrp_rules"  # relevance propagation rules for every layer from the logits down to the embeddings
    EMBEDDING_TABLE = "embedding_table"  # an input embedding table (random words for sigma's concepts)
    SEQUENCE_OUTPUT = "sequence_output"  # the `output` layer has a row per position (sigma's timestamp mode)
    GENERATION = "generation"  # a generative LM: a prompt, generated or given tokens, one explanation per step


@dataclass(frozen=True)
class Requires:
    """A method's requirement: every capability of ``all_of`` and at least one of ``any_of`` (when not empty)."""

    all_of: frozenset[Capability] = frozenset()
    any_of: tuple[Capability, ...] = ()  # in order of preference: a method with views runs the first offered

    def missing(self, offered: Iterable[Capability]) -> list[str]:
        """The capabilities an adapter offering `offered` lacks, as words for a message (empty: it applies)."""
        have = frozenset(offered)
        gaps = [str(c) for c in sorted(self.all_of - have)]
        if self.any_of and not have.intersection(self.any_of):
            gaps.append("one of " + ", ".join(self.any_of))
        return gaps


def requires(*all_of: Capability, any_of: tuple[Capability, ...] = ()) -> Requires:
    return Requires(frozenset(all_of), any_of)


HEAD, SELF_ATTENTION, PAIR_ALIGNMENT = Capability.HEAD, Capability.SELF_ATTENTION, Capability.PAIR_ALIGNMENT
LSTM_GATES, NEXT_WORD, LRP_RULES = Capability.LSTM_GATES, Capability.NEXT_WORD, Capability.LRP_RULES

# The method registry: name (= module worker/methods/<name>.py) -> what it requires. GET /v1/methods lists this order.
METHODS: dict[str, Requires] = {
    "gradient": requires(HEAD),
    "smoothgrad": requires(HEAD),
    "grad_x_input": requires(HEAD),
    "integrated_gradients": requires(HEAD),
    "occlusion": requires(HEAD),
    "perturbation": requires(HEAD),
    "lime": requires(HEAD),
    "shap": requires(HEAD),
    "lrp": requires(HEAD, LRP_RULES),
    "sigma": requires(),
    "attention": requires(any_of=(PAIR_ALIGNMENT, NEXT_WORD, SELF_ATTENTION)),
    "attention_saliency": requires(HEAD, PAIR_ALIGNMENT),
    "gating": requires(HEAD, LSTM_GATES, PAIR_ALIGNMENT),
    "attention_rollout": requires(SELF_ATTENTION),
    "activations": requires(),
}


# The methods that explain a generative model step by step (worker/methods/generation.py); no other applies to one.
GENERATION_METHODS = ("gradient", "grad_x_input", "integrated_gradients", "occlusion", "lime", "sigma", "attention",
                      "attention_rollout", "activations")


def applicable(offered: Iterable[Capability]) -> list[str]:
    """The methods, in registry order, that apply to an adapter offering `offered`."""
    have = frozenset(offered)
    if Capability.GENERATION in have:
        return [name for name in METHODS if name in GENERATION_METHODS]
    return [name for name, requirement in METHODS.items() if not requirement.missing(have)]
