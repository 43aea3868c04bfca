"""The model adapter: the one abstraction every method stands on (docs/extending.md).

Shapes: B = batch of inputs, T = tokens (padded), K = embedding size.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from worker.capabilities import Capability, applicable


@dataclass
class Encoding:
    """A batch of tokenised inputs. Per-item lists are unpadded; tensors are padded to T."""

    input_ids: torch.Tensor  # B×T long
    attention_mask: torch.Tensor  # B×T long, 1 = real token
    tokens: list[list[str]]  # token strings, specials included
    special: list[list[bool]]  # True for [CLS], [SEP], <pad>, …
    words: list[list[list[int]]]  # per item: per word, the indices of its tokens
    offsets: list[list[tuple[int, int]]]  # per item: character span of each token in its text ((0, 0) for specials)
    segments: list[list[int]]  # per item: 0 = text / premise, 1 = hypothesis
    inputs: list[dict[str, str]] = field(default_factory=list)  # the raw inputs, as given
    token_type_ids: torch.Tensor | None = None  # B×T long, for models that take segment ids (BERT pairs)

    def __len__(self) -> int:
        return len(self.tokens)

    def word_strings(self, i: int = 0) -> list[str]:
        """The words of item i, rebuilt from the character offsets of their tokens."""
        texts = self.inputs[i]
        out = []
        for group in self.words[i]:
            seg = self.segments[i][group[0]]
            text = texts.get("hypothesis" if seg == 1 else "premise", texts.get("text", ""))
            start, end = self.offsets[i][group[0]][0], self.offsets[i][group[-1]][1]
            out.append(text[start:end] if end > start else self.tokens[i][group[0]])
        return out

    def to(self, device: torch.device | str) -> Encoding:
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        if self.token_type_ids is not None:
            self.token_type_ids = self.token_type_ids.to(device)
        return self

    def item(self, i: int) -> Encoding:
        """Item i alone, without its padding."""
        n = len(self.tokens[i])
        return Encoding(
            input_ids=self.input_ids[i : i + 1, :n],
            attention_mask=self.attention_mask[i : i + 1, :n],
            tokens=[self.tokens[i]],
            special=[self.special[i]],
            words=[self.words[i]],
            offsets=[self.offsets[i]],
            segments=[self.segments[i]],
            inputs=self.inputs[i : i + 1],
            token_type_ids=None if self.token_type_ids is None else self.token_type_ids[i : i + 1, :n],
        )

    def subset(self, indices: list[int]) -> Encoding:
        """Items `indices`, in that order, padded only to their own longest (no padding at all when they have one
        length)."""
        width = max(len(self.tokens[i]) for i in indices)
        rows = torch.tensor(indices, device=self.input_ids.device)
        return Encoding(
            input_ids=self.input_ids[rows, :width],
            attention_mask=self.attention_mask[rows, :width],
            tokens=[self.tokens[i] for i in indices],
            special=[self.special[i] for i in indices],
            words=[self.words[i] for i in indices],
            offsets=[self.offsets[i] for i in indices],
            segments=[self.segments[i] for i in indices],
            inputs=[self.inputs[i] for i in indices] if self.inputs else [],
            token_type_ids=None if self.token_type_ids is None else self.token_type_ids[rows, :width],
        )

    def repeat(self, n: int) -> Encoding:
        """The batch repeated n times (item order: all items, n times over), e.g. for noisy copies."""
        return Encoding(
            input_ids=self.input_ids.repeat(n, 1),
            attention_mask=self.attention_mask.repeat(n, 1),
            tokens=self.tokens * n,
            special=self.special * n,
            words=self.words * n,
            offsets=self.offsets * n,
            segments=self.segments * n,
            inputs=self.inputs * n,
            token_type_ids=None if self.token_type_ids is None else self.token_type_ids.repeat(n, 1),
        )


@dataclass
class Trace:
    """What one forward pass exposes. Tensors keep the batch dimension first."""

    logits: torch.Tensor | None  # B×C, or None for a headless encoder / when stopped early
    layers: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> B×T×H (or B×H for pool/output)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> B×heads×T×T (after softmax)
    gates: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> B×T×H

    def head_logits(self) -> torch.Tensor:
        """The logits of a run that reached the output head (a headless model or a run stopped early has none)."""
        if self.logits is None:
            raise InputError("this run has no logits: the model has no output head, or it stopped before it")
        return self.logits


class Adapter(ABC):
    """Wraps one model revision. encode/describe work without loading weights; embed/forward load them."""

    name: str
    revision: str  # sha256 of the bundle's files
    labels: list[str] | None  # None for a headless encoder
    layer_names: list[str]  # forward order, starting with "embeddings"
    attention_names: list[str] = []
    gate_names: list[str] = []
    device: torch.device = torch.device("cpu")
    # the token id that stands in for a removed token (faithfulness, occlusion, LIME); None = this adapter cannot mask
    mask_token_id: int | None = None
    # what every model of this class offers methods (worker/models/protocols.py says what each promises); `head`
    # is not listed here: it comes from `labels`
    offers: ClassVar[frozenset[Capability]] = frozenset()

    @abstractmethod
    def encode(self, inputs: dict[str, str] | Iterable[dict[str, str]]) -> Encoding:
        """Tokenise one input ({"text"} or {"premise", "hypothesis"}) or a list of them."""

    @abstractmethod
    def embed(self, encoding: Encoding) -> torch.Tensor:
        """B×T×K input embeddings: what sigma perturbs and gradients reach."""

    @abstractmethod
    def forward(
        self,
        x: torch.Tensor,
        encoding: Encoding,
        capture: Iterable[str] = (),
        upto: str | None = None,
    ) -> Trace:
        """Run from embeddings x. capture: layer/attention/gate names to keep; upto: stop after this layer."""

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory. Adapters that read them lazily (on the first embed or forward, so
        that tokenising costs no weights) say False until then."""
        return True

    @property
    def has_head(self) -> bool:
        return self.labels is not None

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this model offers methods: its class's ``offers``, and ``head`` when it has labels."""
        return (self.offers | {Capability.HEAD}) if self.has_head else self.offers

    def head_labels(self) -> list[str]:
        """The labels of a model with a head, for the methods that explain a class (they require ``head``)."""
        if self.labels is None:
            raise InputError(f"{self.name} has no output head")
        return self.labels

    def to(self, device: torch.device | str) -> Adapter:
        self.device = torch.device(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "labels": self.labels,
            "layers": self.layer_names,
            "attention": self.attention_names,
            "gates": self.gate_names,
            "capabilities": [str(c) for c in sorted(self.capabilities)],
            "methods": applicable(self.capabilities),
        }

    def count_tokens(self, inputs: dict[str, str]) -> int:
        return len(self.encode(inputs).tokens[0])

    def input_length(self, inputs: dict[str, str]) -> int:
        """Tokens of one input, refused (InputError) as `encode` refuses it; an adapter may count without encoding."""
        return len(self.encode(inputs).tokens[0])

    def embedding_std(self) -> float | None:
        """Std of the input embedding matrix (sigma's default bound is 10× it), or None when the adapter has no
        embedding matrix to measure."""
        return None

    def bundle_file(self, name: str) -> Path | None:
        """A file stored in the model's bundle directory (e.g. ``sigma_stats.safetensors``), or None if absent."""
        root = getattr(getattr(self, "spec", None), "path", None)
        path = Path(root) / name if root is not None else None
        return path if path is not None and path.is_file() else None

    def mask(self, encoding: Encoding, drop: torch.Tensor) -> Encoding:
        """A copy of `encoding` whose tokens where `drop` (B×T bool) is True are replaced by `mask_token_id`
        (same length, same word grouping and offsets: masking at the id level). Adapters without a mask id refuse."""
        if self.mask_token_id is None:
            raise InputError(f"{self.name} has no mask token: tokens cannot be removed from its inputs")
        ids = encoding.input_ids.masked_fill(drop.to(encoding.input_ids.device), self.mask_token_id)
        return dataclasses.replace(encoding, input_ids=ids)


class InputError(ValueError):
    """The input cannot be explained by this model (empty, too long, wrong fields): a 4xx, not a crash."""
