"""The base of the adapters whose architecture Lantern defines: BiLSTM, CNN, Transformer, seq2seq (docs/api.md, layer names).

A bundle (format and safety rules in :mod:`worker.models.bundle`) holds::

    config.json        {"lantern": 1, "name": …, "adapter": "bilstm" | "cnn" | "transformer" | "seq2seq",
                        "labels": [...] | null, "vocab": "vocab.txt", "weights": "model.safetensors",
                        "model": {architecture sizes, read by the adapter's module}, "max_tokens": 512,
                        "description", "license", "source", "metrics", "training"}
    vocab.txt          one token per line (:mod:`worker.models.words`)
    model.safetensors  the module's state dict (float32; the embedding table may be stored as float16)

Each adapter module defines an ``nn.Module`` with ``steps(x, **inputs)``: a generator that yields ``(name, tensor)``
for every layer and attention map in forward order and computes nothing beyond what has been taken from it. So
``forward(..., upto=name)`` stops right after the deepest layer asked for, and a layer's value is the same whether the
run stopped there or went to the end.

Padding: every per-token layer is B×T×H with zeros at padded positions; real positions do not depend on padding
(a batch gives, to float rounding, what each item gives alone). :meth:`NativeAdapter.layer_mask` says which positions
of a layer are real.

Weights load lazily: the constructor reads only config.json, vocab.txt and the safetensors header (tensor names and
shapes are checked against the architecture there, so a bad bundle fails at registration, not at the first job).
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from worker.capabilities import Capability
from worker.models.base import Adapter, Encoding, InputError, Trace
from worker.models.bundle import BundleSpec
from worker.models.protocols import without_padding
from worker.models.words import UNK, Vocabulary, tokenize

DEFAULT_MAX_TOKENS = 512


class NativeAdapter(Adapter):
    """Shared encode/embed/forward/describe for the Lantern-defined architectures (module docstring).

    A subclass sets ``kind``, implements :meth:`architecture` (the ``nn.Module`` from ``config["model"]``) and
    :meth:`step_names` (layer and attention names in the order ``steps`` yields them), and may override
    :meth:`layout` (the tokens of one text) and :meth:`inputs` (what ``steps`` takes besides x).
    """

    kind: str = ""
    offers = frozenset({Capability.EMBEDDING_TABLE})

    def __init__(self, spec: BundleSpec, revision: str):
        self.spec = spec
        self.name = spec.name
        self.revision = revision
        self.device = torch.device("cpu")
        self.config = spec.config
        self._lock = threading.RLock()
        self._module: nn.Module | None = None
        self._check_config()
        self.labels = self.config.get("labels")
        self.hyper: dict[str, Any] = self.config["model"]
        self.max_tokens = int(self.config.get("max_tokens", DEFAULT_MAX_TOKENS))
        self.vocab = self._read_vocab()
        self.mask_token_id = self.vocab.id(UNK)  # a removed word becomes <unk> (faithfulness, occlusion, LIME)
        self.weights_path = self._file("weights", "model.safetensors")
        self._check_weights()
        self.step_order = self.step_names()
        self.attention_names = [n for n in self.step_order if n.startswith("attention")]
        self.layer_names = [n for n in self.step_order if n not in self.attention_names]
        self.gate_names = []

    # ---------------------------------------------------------------- subclass hooks
    @staticmethod
    def architecture(hyper: dict[str, Any], vocab_size: int, classes: int) -> nn.Module:
        """The module for ``config["model"]`` = hyper, with random weights (also what the zoo trainers train)."""
        raise NotImplementedError

    def build(self) -> nn.Module:
        return self.architecture(self.hyper, len(self.vocab), len(self.labels or ()))

    def step_names(self) -> list[str]:
        raise NotImplementedError

    def layout(self, text: str) -> list[tuple[str, bool, tuple[int, int], int]]:
        """(token, special, (start, end), segment) for each token of one text: by default its words."""
        return [(token, False, (start, end), 0) for token, start, end in tokenize(text)]

    def inputs(self, encoding: Encoding) -> dict[str, torch.Tensor]:
        """What ``steps`` takes besides x: by default the B×T bool mask of real tokens."""
        return {"mask": encoding.attention_mask.to(self.device).bool()}

    def layer_mask(self, name: str, encoding: Encoding) -> torch.Tensor | None:
        """B×T bool: the real positions of per-token layer `name` (None for ``pool``/``output``)."""
        return None if name in ("pool", "output") else encoding.attention_mask.to(self.device).bool()

    # ---------------------------------------------------------------- bundle
    def _file(self, key: str, default: str):
        name = self.config.get(key, default)
        path = (self.spec.path / str(name)).resolve()
        if not path.is_relative_to(self.spec.path) or not path.is_file():
            raise InputError(f"config.json: {key} file {name!r} is missing")
        return path

    def _check_config(self) -> None:
        labels, max_tokens = self.config.get("labels"), self.config.get("max_tokens", DEFAULT_MAX_TOKENS)
        if labels is not None and (not isinstance(labels, list) or not labels or len(set(labels)) != len(labels)
                                   or not all(isinstance(x, str) and x for x in labels)):
            raise InputError("config.json: 'labels' must be null or a list of distinct non-empty strings")
        if not isinstance(self.config.get("model"), dict):
            raise InputError(f"config.json: 'model' must be an object with the {self.kind}'s sizes")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
            raise InputError("config.json: 'max_tokens' must be a positive integer")

    def _read_vocab(self) -> Vocabulary:
        try:
            return Vocabulary.read(self._file("vocab", "vocab.txt"))
        except (UnicodeDecodeError, ValueError) as err:
            raise InputError(f"the vocabulary file is not usable: {err}") from None

    def _check_weights(self) -> None:
        """The safetensors header must name exactly the module's tensors, with its shapes."""
        from safetensors import safe_open

        try:
            with torch.device("meta"):
                expected = {k: tuple(v.shape) for k, v in self.build().state_dict().items()}
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"config.json: bad model settings for a {self.kind}: {err!r}") from None
        try:
            with safe_open(str(self.weights_path), "pt") as handle:
                found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except Exception as err:  # any unreadable header is the bundle's fault
            raise InputError(f"{self.weights_path.name} is not a readable safetensors file: {err}") from None
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        if wrong:
            detail = ", ".join(f"{k}: expected {expected.get(k)}, found {found.get(k)}" for k in wrong[:5])
            raise InputError(f"{self.weights_path.name} does not fit a {self.kind} with these settings: {detail}")
        if self.labels is not None and expected.get("output.weight", (None,))[0] != len(self.labels):
            raise InputError("config.json: the number of labels must equal the output layer's size")

    @property
    def loaded(self) -> bool:
        return self._module is not None

    def load(self) -> NativeAdapter:
        """Read the weights (idempotent): float32, eval mode, parameters frozen."""
        from safetensors.torch import load_file

        with self._lock:
            if self._module is None:
                module = self.build()
                state = {k: v.float() for k, v in load_file(str(self.weights_path)).items()}
                module.load_state_dict(state)
                self._module = module.eval().requires_grad_(False).to(self.device)
        return self

    @property
    def module(self) -> nn.Module:
        return self.load()._module

    def to(self, device: torch.device | str) -> NativeAdapter:
        with self._lock:
            self.device = torch.device(device)
            if self._module is not None:
                self._module.to(self.device)
        return self

    # ---------------------------------------------------------------- encode
    def _text(self, item: Any) -> str:
        from worker.models.hf import HFAdapter

        first, second = HFAdapter._normalise(item)
        if second is not None:
            raise InputError(f"{self.name} takes a single text, not a premise and a hypothesis")
        return first

    def item_layout(self, item: Any) -> list[tuple[str, bool, tuple[int, int], int]]:
        """The tokens of one input (an input dict): by default :meth:`layout` of its single text."""
        return self.layout(self._text(item))

    def count_tokens(self, inputs: dict[str, str]) -> int:
        return len(self.item_layout(inputs))

    def encode(self, inputs: dict[str, str] | Iterable[dict[str, str]]) -> Encoding:
        items = [inputs] if isinstance(inputs, dict) else list(inputs)
        if not items:
            raise InputError("no inputs")
        rows = []
        for item in items:
            row = self.item_layout(item)
            if not row or all(special for _, special, _, _ in row):
                raise InputError("the input has no words once tokenised")
            if len(row) > self.max_tokens:
                raise InputError(f"the input has {len(row)} tokens; {self.name} takes at most {self.max_tokens}")
            rows.append(row)
        width = max(len(r) for r in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)  # <pad> is id 0
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor([self.vocab.id(token) for token, *_ in row])
            mask[i, : len(row)] = 1
        return Encoding(
            input_ids=input_ids, attention_mask=mask,
            tokens=[[token for token, *_ in row] for row in rows],
            special=[[special for _, special, _, _ in row] for row in rows],
            words=[[[t] for t in range(len(row))] for row in rows],
            offsets=[[span for _, _, span, _ in row] for row in rows],
            segments=[[segment for *_, segment in row] for row in rows],
            inputs=[dict(item) for item in items],
        )

    # ---------------------------------------------------------------- run
    def embed(self, encoding: Encoding) -> torch.Tensor:
        """B×T×K rows of the embedding table (detached): what sigma perturbs and gradients reach."""
        with torch.no_grad():
            return self.module.embeddings(encoding.input_ids.to(self.device)).detach()

    def embedding_std(self) -> float:
        """Std over all entries of the embedding table (sigma's default bound is 10× it)."""
        return float(self.module.embeddings.weight.std())

    def embedding_table(self) -> torch.Tensor:
        """The ``embedding_table`` capability: the module's word embeddings without the padding row (N×K)."""
        return without_padding(self.module.embeddings)

    def _stop(self, capture: list[str], upto: str | None) -> str:
        unknown = [n for n in capture if n not in self.step_order]
        if unknown or (upto is not None and upto not in self.layer_names):
            raise InputError(f"unknown layer or attention name(s): {', '.join(unknown or [str(upto)])}; "
                             f"this model has {self.layer_names} and {self.attention_names}")
        stop = upto if upto is not None else self.layer_names[-1]
        too_deep = [n for n in capture if self.step_order.index(n) > self.step_order.index(stop)]
        if too_deep:
            raise InputError(f"{', '.join(too_deep)} lie beyond upto={upto!r}")
        return stop

    def forward(
        self,
        x: torch.Tensor,
        encoding: Encoding,
        capture: Iterable[str] = (),
        upto: str | None = None,
    ) -> Trace:
        """x: B×T×K. Returns ``logits`` (B×C for a classifier that ran to ``output``, else None) and the captured
        ``layers`` and ``attention``; nothing after `upto` (default: the last layer) is computed."""
        capture = list(dict.fromkeys(capture))
        stop = self._stop(capture, upto)
        trace = Trace(logits=None)
        for name, value in self.module.steps(x, **self.inputs(encoding)):
            if name == "output" and self.labels is not None:
                trace.logits = value
            if name in capture:
                (trace.attention if name in self.attention_names else trace.layers)[name] = value
            if name == stop:
                break
        return trace

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({
            "kind": self.kind,
            "max_tokens": self.max_tokens,
            "vocab_size": len(self.vocab),
            "model": dict(self.hyper),
            "description": self.config.get("description"),
        })
        return info


def run_steps(module: nn.Module, x: torch.Tensor, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer of one full run (training, tests)."""
    return dict(module.steps(x, **inputs))


def masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B×T×H, B×T bool -> B×H: max over the real positions."""
    return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


def sequence_lengths(mask: torch.Tensor) -> torch.Tensor:
    """B×T bool -> B lengths on the CPU (what pack_padded_sequence wants)."""
    return mask.sum(1).cpu()

