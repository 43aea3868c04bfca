"""The Hugging Face encoder adapter: any local BERT-like directory, headless or with a classification head.

Layers (docs/api.md, layer names): ``embeddings`` (= ``hidden_states[0]``), ``layer.1`` … ``layer.N`` (``layer.k`` =
``hidden_states[k]``, the output of HF's ``encoder.layer.{k-1}``); with a head also ``pool`` (B×H, the head's input)
and ``output`` (B×C logits). Attention: ``attention.1`` … ``attention.N``, B×heads×T×T after softmax.

x is the word embedding (B×T×K) fed as ``inputs_embeds``; position and token-type embeddings are added inside the model.

Heads:
- ``"none"``: a plain encoder (``AutoModel``); ``labels`` is None, ``forward`` returns ``logits=None``.
- ``"lantern"``: a frozen encoder + :class:`MeanPoolHead` from a Lantern bundle (``head.safetensors``).
- ``"hf"``: a ``*ForSequenceClassification`` directory (``AutoModelForSequenceClassification``); ``pool`` is the input
  of its classifier module (position 0 when that input is per token).

Weights load lazily: ``encode``/``describe``/``count_tokens`` read only the config and tokenizer files; the first
``embed``/``forward`` loads the weights (safetensors only, local files only, no remote code).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from worker.capabilities import Capability
from worker.models.base import Adapter, Encoding, InputError, Trace
from worker.models.bundle import BundleSpec
from worker.models.protocols import ScoreTarget, without_padding

# Every from_pretrained call: local files only, safetensors only, never code from the directory.
LOAD_KWARGS: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}


class MeanPoolHead(nn.Module):
    """pool = mean over real (unpadded) tokens of the encoder's last hidden states (B×H);
    output = fc2(gelu(fc1((pool - mean) / std))) or, with hidden_size 0, fc((pool - mean) / std) (B×C).

    ``mean``/``std`` standardise the pooled features (statistics of the training set, stored with the weights).
    safetensors keys: ``mean``, ``std`` and ``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias`` (or
    ``fc.weight``, ``fc.bias``).
    """

    def __init__(self, input_size: int, classes: int, hidden_size: int = 0, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_size))
        self.register_buffer("std", torch.ones(input_size))
        self.hidden_size = hidden_size
        self.dropout = nn.Dropout(dropout)
        if hidden_size:
            self.fc1 = nn.Linear(input_size, hidden_size)
            self.fc2 = nn.Linear(hidden_size, classes)
        else:
            self.fc = nn.Linear(input_size, classes)

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """B×T×H hidden states, B×T mask -> B×H mean over the real tokens (specials included, padding excluded)."""
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        z = self.dropout((pooled - self.mean) / self.std)
        if self.hidden_size:
            return self.fc2(self.dropout(nn.functional.gelu(self.fc1(z))))
        return self.fc(z)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> MeanPoolHead:
        return cls(int(spec["input_size"]), int(spec["classes"]), int(spec.get("hidden_size") or 0),
                   float(spec.get("dropout") or 0.0))


def _find_layer_list(model: nn.Module, count: int) -> tuple[nn.Module, str]:
    """The parent module and attribute name of the ModuleList that holds the `count` transformer blocks."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and name:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr
    raise InputError(f"cannot find the {count} encoder layers of {type(model).__name__}")


class HFAdapter(Adapter):
    """A Hugging Face encoder from a local directory (module docstring)."""

    offers = frozenset({Capability.SELF_ATTENTION, Capability.EMBEDDING_TABLE})

    def __init__(self, spec: BundleSpec, revision: str):
        from transformers import AutoConfig, AutoTokenizer

        self.spec = spec
        self.name = spec.name
        self.revision = revision
        self.device = torch.device("cpu")
        self._lock = threading.RLock()
        self._model: nn.Module | None = None
        self._head: MeanPoolHead | None = None
        if spec.kind == "lantern":
            self.head_kind = "lantern" if spec.head else "none"
        else:
            self.head_kind = "hf" if spec.labels is not None else "none"
        self.labels = spec.labels
        try:
            self.config = AutoConfig.from_pretrained(str(spec.encoder_dir), **LOAD_KWARGS)
            self.tokenizer = AutoTokenizer.from_pretrained(str(spec.encoder_dir), use_fast=True, **LOAD_KWARGS)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot read the model's config or tokenizer: {err}") from None
        if not getattr(self.tokenizer, "is_fast", False):
            raise InputError("the model needs a fast tokenizer (tokenizer.json): word grouping and offsets use it")
        self.num_layers = int(getattr(self.config, "num_hidden_layers", 0) or 0)
        if self.num_layers <= 0:
            raise InputError("the model's config has no num_hidden_layers")
        limits = [int(self.tokenizer.model_max_length or 0), int(getattr(self.config, "max_position_embeddings", 0))]
        self.max_tokens = min(v for v in limits if 0 < v < 1_000_000) if any(0 < v < 1_000_000 for v in limits) \
            else 512
        head = ["pool", "output"] if self.labels is not None else []
        self.layer_names = ["embeddings", *(f"layer.{k}" for k in range(1, self.num_layers + 1)), *head]
        self.attention_names = [f"attention.{k}" for k in range(1, self.num_layers + 1)]
        self.gate_names = []
        self._takes_token_types = "token_type_ids" in self.tokenizer.model_input_names
        # a removed token becomes [MASK] (else [UNK], else padding): masking at the id level
        self.mask_token_id = next((i for i in (self.tokenizer.mask_token_id, self.tokenizer.unk_token_id,
                                               self.tokenizer.pad_token_id) if i is not None), None)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The class's, plus ``lrp_rules`` for a BERT-family classifier (AttnLRP: :mod:`worker.models.bert_rules`)."""
        from worker.models import bert_rules

        offered = super().capabilities
        return offered | {Capability.LRP_RULES} if self.has_head and bert_rules.supports(self.config) else offered

    def lrp_relevance(self, x: torch.Tensor, mask: torch.Tensor, target: ScoreTarget, epsilon: float,
                      encoding: Encoding | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``lrp_rules`` capability: AttnLRP through the BERT layers and the head, in one backward pass."""
        from worker.models import bert_rules
        from worker.models.relevance import Rules, input_relevance

        rules = Rules(epsilon)
        types = None if encoding is None or encoding.token_type_ids is None else encoding.token_type_ids
        with self._lock:
            model, head = self.model, self.head

            def logits(e: torch.Tensor) -> torch.Tensor:
                states = bert_rules.encoder_states(self.encoder, e, mask, types, rules)
                if self.head_kind == "lantern" and head is not None:
                    return bert_rules.mean_pool_logits(head, states, mask, rules)
                return bert_rules.classifier_logits(model, states, rules)

            return input_relevance(x, logits, target, epsilon)

    # ---------------------------------------------------------------- weights
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> HFAdapter:
        """Read the weights (idempotent). Parameters are frozen and the model is in eval mode."""
        with self._lock:
            if self._model is not None:
                return self
            from transformers import AutoModel, AutoModelForSequenceClassification
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no tqdm bars in worker logs
            cls = AutoModelForSequenceClassification if self.head_kind == "hf" else AutoModel
            model = cls.from_pretrained(str(self.spec.encoder_dir), attn_implementation="eager",
                                        use_safetensors=True, **LOAD_KWARGS)
            model.eval().requires_grad_(False)
            head = None
            if self.head_kind == "lantern":
                from safetensors.torch import load_file

                spec = self.spec.head or {}  # a "lantern" head kind means the bundle has a head spec
                head = MeanPoolHead.from_spec(spec)
                head.load_state_dict(load_file(str(self.spec.path / spec["file"])))
                head.eval().requires_grad_(False)
            self._model, self._head = model.to(self.device), None if head is None else head.to(self.device)
        return self

    @property
    def model(self) -> nn.Module:
        return self.load()._model

    @property
    def encoder(self) -> nn.Module:
        """The bare encoder (``BertModel`` …), also for a sequence classifier."""
        model = self.model
        return model.base_model if self.head_kind == "hf" else model

    @property
    def head(self) -> MeanPoolHead | None:
        self.load()
        return self._head

    def to(self, device: torch.device | str) -> HFAdapter:
        with self._lock:
            self.device = torch.device(device)
            if self._model is not None:
                self._model.to(self.device)
            if self._head is not None:
                self._head.to(self.device)
        return self

    # ---------------------------------------------------------------- encode
    @staticmethod
    def _normalise(item: Any) -> tuple[str, str | None]:
        if not isinstance(item, dict):
            raise InputError("an input is an object: {\"text\": ...} or {\"premise\": ..., \"hypothesis\": ...}")
        if "text" in item and ("premise" in item or "hypothesis" in item):
            raise InputError("give either text or premise and hypothesis, not both")
        if "text" in item:
            text = item["text"]
            if not isinstance(text, str) or not text.strip():
                raise InputError("text is empty")
            return text, None
        if "premise" in item or "hypothesis" in item:
            pair = []
            for key in ("premise", "hypothesis"):
                value = item.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise InputError(f"{key} is empty")
                pair.append(value)
            return pair[0], pair[1]
        raise InputError("an input needs text, or premise and hypothesis")

    def count_tokens(self, inputs: dict[str, str]) -> int:
        """Tokens (specials included) of one input, without the length check: for limits in the API process."""
        first, second = self._normalise(inputs)
        return len(self.tokenizer(first, second, add_special_tokens=True)["input_ids"])

    def input_length(self, inputs: dict[str, str]) -> int:
        """`encode`'s refusals and token count for one input, without building the encoding (no offsets, words or
        tensors): the API's check of a submit."""
        first, second = self._normalise(inputs)
        enc = self.tokenizer(first, second, add_special_tokens=True)
        self._refuse_unusable(enc["input_ids"], enc.sequence_ids())
        return len(enc["input_ids"])

    def _refuse_unusable(self, ids: list[int], sequence_ids: list[int | None]) -> None:
        if len(ids) > self.max_tokens:
            raise InputError(f"the input has {len(ids)} tokens; {self.name} takes at most {self.max_tokens}")
        if all(s is None for s in sequence_ids):
            raise InputError("the input has no tokens once tokenised")

    def encode(self, inputs: dict[str, str] | Iterable[dict[str, str]]) -> Encoding:
        items = [inputs] if isinstance(inputs, dict) else list(inputs)
        if not items:
            raise InputError("no inputs")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows: list[dict[str, Any]] = []
        for item in items:
            first, second = self._normalise(item)
            enc = self.tokenizer(first, second, add_special_tokens=True, return_offsets_mapping=True)
            ids = enc["input_ids"]
            sequence_ids = enc.sequence_ids()
            self._refuse_unusable(ids, sequence_ids)
            word_ids = enc.word_ids()
            special = [s is None for s in sequence_ids]
            # segment: the text's sequence id; a special token belongs to the segment before it ([CLS] to 0)
            segments, current = [], 0
            for s in sequence_ids:
                current = s if s is not None else current
                segments.append(int(current))
            words: list[list[int]] = []
            previous = None
            for t, (s, w) in enumerate(zip(sequence_ids, word_ids, strict=True)):
                key = ("special", t) if s is None or w is None else (s, w)
                if key == previous:
                    words[-1].append(t)
                else:
                    words.append([t])
                previous = key
            offsets = [(0, 0) if sp else (int(a), int(b))
                       for sp, (a, b) in zip(special, enc["offset_mapping"], strict=True)]
            rows.append({
                "ids": ids, "tokens": self.tokenizer.convert_ids_to_tokens(ids), "special": special,
                "words": words, "offsets": offsets, "segments": segments,
                "types": enc.get("token_type_ids"),
            })
        width = max(len(r["ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long) if self._takes_token_types else None
        for i, r in enumerate(rows):
            n = len(r["ids"])
            input_ids[i, :n] = torch.tensor(r["ids"])
            mask[i, :n] = 1
            if types is not None:
                types[i, :n] = torch.tensor(r["types"] if r["types"] is not None else r["segments"])
        return Encoding(
            input_ids=input_ids, attention_mask=mask, tokens=[r["tokens"] for r in rows],
            special=[r["special"] for r in rows], words=[r["words"] for r in rows],
            offsets=[r["offsets"] for r in rows], segments=[r["segments"] for r in rows],
            inputs=[dict(item) for item in items], token_type_ids=types,
        )

    # ---------------------------------------------------------------- run
    def embed(self, encoding: Encoding) -> torch.Tensor:
        """B×T×K word embeddings (no position/type embeddings), detached from the weights."""
        with torch.no_grad():
            return self.model.get_input_embeddings()(encoding.input_ids.to(self.device)).detach()

    def embedding_std(self) -> float:
        """Std over all entries of the word-embedding matrix (MiniLM: 0.0556)."""
        return float(self.model.get_input_embeddings().weight.detach().float().std())

    def embedding_table(self) -> torch.Tensor:
        """The ``embedding_table`` capability: the word-embedding matrix without its padding row (N×K)."""
        return without_padding(self.model.get_input_embeddings())

    @contextlib.contextmanager
    def _truncated(self, keep: int) -> Iterator[None]:
        """Run only the first `keep` encoder layers (the same module objects) for the duration of the block."""
        if keep >= self.num_layers:
            yield
            return
        # transformers installs its hidden-state hooks on the layers present at the first call: install them on all
        # layers first, or a model whose first call is truncated would record too few hidden states ever after
        from transformers.utils.output_capturing import maybe_install_capturing_hooks

        maybe_install_capturing_hooks(self.encoder)
        parent, attr = _find_layer_list(self.encoder, self.num_layers)
        full = getattr(parent, attr)
        setattr(parent, attr, nn.ModuleList(list(full)[:keep]))
        try:
            yield
        finally:
            setattr(parent, attr, full)

    def _depth(self, name: str) -> int:
        """How many encoder layers must run to produce `name` (N+1 = the head too)."""
        if name == "embeddings":
            return 0
        if name.startswith("layer.") or name.startswith("attention."):
            return int(name.split(".", 1)[1])
        return self.num_layers + 1  # pool, output

    def forward(
        self,
        x: torch.Tensor,
        encoding: Encoding,
        capture: Iterable[str] = (),
        upto: str | None = None,
    ) -> Trace:
        """x: B×T×K. Returns logits (B×C; None for a headless model or when stopped before ``output``) and the
        captured ``layers`` (B×T×H; ``pool`` B×H, ``output`` B×C) and ``attention`` (B×heads×T×T)."""
        capture = list(dict.fromkeys(capture))
        known = set(self.layer_names) | set(self.attention_names)
        unknown = [n for n in capture if n not in known]
        if unknown or (upto is not None and upto not in self.layer_names):
            raise InputError(f"unknown layer or attention name(s): {', '.join(unknown or [str(upto)])}; "
                             f"this model has {self.layer_names} and {self.attention_names}")
        stop = self._depth(upto) if upto is not None else self.num_layers + 1
        too_deep = [n for n in capture if self._depth(n) > stop]
        if too_deep:
            raise InputError(f"{', '.join(too_deep)} lie beyond upto={upto!r}")
        want_attention = any(n in self.attention_names for n in capture)
        mask = encoding.attention_mask.to(x.device)
        kwargs: dict[str, Any] = {"inputs_embeds": x, "attention_mask": mask, "output_hidden_states": True,
                                  "output_attentions": want_attention}
        if encoding.token_type_ids is not None:
            kwargs["token_type_ids"] = encoding.token_type_ids.to(x.device)

        pooled: list[torch.Tensor] = []
        logits = None
        with self._lock:
            model = self.model
            if stop > self.num_layers and self.head_kind == "hf":
                classifier = next((m for n, m in model.named_children() if n in ("pre_classifier", "classifier")), None)
                if classifier is None:
                    raise InputError(f"cannot find the classifier module of {type(model).__name__}")

                def grab(module: nn.Module, args: tuple) -> None:
                    pooled.append(args[0][:, 0] if args[0].dim() == 3 else args[0])

                handle = classifier.register_forward_pre_hook(grab)
                try:
                    out = model(**kwargs)
                finally:
                    handle.remove()
                logits = out.logits
            else:
                # at least one layer runs so that hidden_states[0] (the embedding output) is recorded
                with self._truncated(max(min(stop, self.num_layers), 1)):
                    out = self.encoder(**kwargs)
                if stop > self.num_layers and self.head_kind == "lantern" and self._head is not None:
                    pooled.append(MeanPoolHead.pool(out.last_hidden_state, mask))
                    logits = self._head(pooled[0])
        trace = Trace(logits=logits)
        hidden = out.hidden_states
        for name in capture:
            if name == "output":
                trace.layers[name] = logits
            elif name == "pool":
                trace.layers[name] = pooled[0]
            elif name in self.attention_names:
                trace.attention[name] = out.attentions[self._depth(name) - 1]
            else:
                trace.layers[name] = hidden[self._depth(name)]
        return trace

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        config = self.spec.config if self.spec.kind == "lantern" else {}
        info.update({
            "kind": "hf-encoder" if self.head_kind == "none" else "hf-classifier",
            "max_tokens": self.max_tokens,
            "hidden_size": int(getattr(self.config, "hidden_size", 0) or 0),
            "heads": int(getattr(self.config, "num_attention_heads", 0) or 0),
            "description": config.get("description"),
        })
        return info
