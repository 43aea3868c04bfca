"""The Hugging Face causal language model adapter: any local ``AutoModelForCausalLM`` folder the pinned transformers
supports natively (GPT-2, Llama, Qwen2/3, Mistral, Gemma, …); safetensors only, local files only, no remote code.

Input: ``{"prompt": text}``, optionally ``"continuation"`` (docs/api.md, generative models). The prompt's tokens are
exactly ``AutoTokenizer.from_pretrained(dir)(prompt)`` (the tokenizer's own special tokens, BOS included when it
adds one); a continuation is tokenised on its own, without special tokens (so give its leading space).

Layers (docs/api.md, layer names): ``embeddings`` (the word embeddings fed as ``inputs_embeds``: B×T×K),
``layer.1`` … ``layer.L`` (``hidden_states[k]``: the output of decoder block k; for the last one, HF's final norm is
applied, as ``hidden_states`` reports it), ``output`` (B×T×V next-token logits at every position). Attention
``attention.1`` … ``attention.L`` (B×heads×T×T after softmax, causal). ``Trace.logits`` = B×V, the logits after
each item's last real token (what the next token is drawn from).

Logits only where they are read: B×T×V at every position is ~7 GB for 64 rows of 576 tokens of GPT-2's 50,257
tokens, so ``forward`` (unless it captures ``output``) and ``sequence_logits`` ask the model for the positions they
read through HF's ``logits_to_keep`` (the model's own head: soft-capping, scaling and biases stay right). How a
model takes it is probed once at load (:func:`keep_mode`): per item (B×n positions), shared (n positions for
every item: the union, then each item's own), or not at all (every position, then picked).

Weights load lazily (eager attention, so that the attention maps are the ones the model computes).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from worker.capabilities import Capability
from worker.models.base import Adapter, Encoding, InputError, Trace
from worker.models.bundle import BundleSpec
from worker.models.hf import LOAD_KWARGS


class CausalLMAdapter(Adapter):
    """A Hugging Face causal LM from a local directory (module docstring)."""

    offers = frozenset({Capability.GENERATION, Capability.SELF_ATTENTION, Capability.EMBEDDING_TABLE,
                        Capability.SEQUENCE_OUTPUT})

    def __init__(self, spec: BundleSpec, revision: str):
        from transformers import AutoConfig, AutoTokenizer

        self.spec, self.name, self.revision = spec, spec.name, revision
        self.device = torch.device("cpu")
        self._lock = threading.RLock()
        self._model: nn.Module | None = None
        self._keep = "none"  # how the model takes logits_to_keep (keep_mode), probed at load
        self.labels = None
        try:
            self.config = AutoConfig.from_pretrained(str(spec.path), **LOAD_KWARGS)
            self.tokenizer = AutoTokenizer.from_pretrained(str(spec.path), **LOAD_KWARGS)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot read the model's config or tokenizer: {err}") from None
        if not getattr(self.tokenizer, "is_fast", False):
            raise InputError("the model needs a fast tokenizer (tokenizer.json): word grouping and offsets use it")
        self.num_layers = int(getattr(self.config, "num_hidden_layers", 0) or 0)
        if self.num_layers <= 0:
            raise InputError("the model's config has no num_hidden_layers")
        context = int(getattr(self.config, "max_position_embeddings", 0) or 0)
        self.max_tokens = context if 0 < context < 1_000_000 else 2048  # prompt + generated tokens
        self.layer_names = ["embeddings", *(f"layer.{k}" for k in range(1, self.num_layers + 1)), "output"]
        self.attention_names = [f"attention.{k}" for k in range(1, self.num_layers + 1)]
        self.gate_names = []
        tok = self.tokenizer
        # a removed token becomes <unk>, else <pad>, else EOS (occlusion, LIME, the "pad" IG baseline)
        self.mask_token_id = next((i for i in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id)
                                   if i is not None), None)
        self.vocab = tok.convert_ids_to_tokens(list(range(len(tok))))

    # ---------------------------------------------------------------- weights
    @property
    def loaded(self) -> bool:
        return self._model is not None

    auto_class = "AutoModelForCausalLM"  # the transformers class that loads the folder

    @property
    def model(self) -> nn.Module:
        with self._lock:
            if self._model is None:
                import transformers
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                model = getattr(transformers, self.auto_class).from_pretrained(
                    str(self.spec.path), use_safetensors=True, attn_implementation="eager", **LOAD_KWARGS)
                model.eval().requires_grad_(False)
                self._model = model.to(self.device)
                self._keep = keep_mode(self._probe(model), self.device)
            return self._model

    @staticmethod
    def _probe(model: nn.Module):
        """ids, **kwargs -> logits: the call through which keep_mode finds how the model takes logits_to_keep."""
        return lambda ids, **kw: model(input_ids=ids, use_cache=False, **kw).logits

    @property
    def vocab_size(self) -> int:
        """V: the width of the logits (the config's; the tokenizer may list fewer tokens)."""
        return max(int(getattr(self.config, "vocab_size", 0) or 0), len(self.vocab))

    @property
    def has_head(self) -> bool:
        """A next-token head over the vocabulary: what faithfulness and the target scores read (``labels`` stays
        None: the vocabulary is not listed as classes)."""
        return True

    def head_labels(self) -> list[str]:
        return self.vocab

    def to(self, device: torch.device | str) -> CausalLMAdapter:
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
        return self

    # ---------------------------------------------------------------- tokens
    def encode(self, inputs: dict[str, str] | Iterable[dict[str, str]]) -> Encoding:
        """The prompt(s), tokenised as ``tokenizer(prompt)`` does (its special tokens included)."""
        items = [inputs] if isinstance(inputs, dict) else list(inputs)
        prompts = []
        for item in items:
            prompt = item.get("prompt") if isinstance(item, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError(f"{self.name} is a generative language model: give a non-empty 'prompt'")
            prompts.append(prompt)
        rows = [self._row(prompt) for prompt in prompts]
        return self._encoding(rows, [dict(item) for item in items])

    def _row(self, prompt: str) -> dict[str, Any]:
        enc = self.tokenizer(prompt, return_offsets_mapping=True, return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        if not ids or all(enc["special_tokens_mask"]):
            raise InputError("the prompt has no tokens once tokenised")
        return {"ids": ids, "special": [bool(s) for s in enc["special_tokens_mask"]],
                "offsets": [tuple(o) for o in enc["offset_mapping"]], "word_ids": enc.word_ids()}

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each token as text (byte-level pieces decoded: ``Ġfilm`` → `` film``)."""
        return [self.tokenizer.convert_tokens_to_string([t]) for t in self.tokenizer.convert_ids_to_tokens(ids)]

    def _encoding(self, rows: list[dict[str, Any]], inputs: list[dict[str, str]]) -> Encoding:
        width = max(len(r["ids"]) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # padded on the right: positions stay 0…n-1 for every item
            ids[i, : len(r["ids"])] = torch.tensor(r["ids"])
            mask[i, : len(r["ids"])] = 1
        return Encoding(input_ids=ids, attention_mask=mask, tokens=[self.token_strings(r["ids"]) for r in rows],
                        special=[r["special"] for r in rows], words=[group_words(r["word_ids"]) for r in rows],
                        offsets=[r["offsets"] for r in rows], segments=[[0] * len(r["ids"]) for r in rows],
                        inputs=[{"text": item.get("prompt", ""), **item} for item in inputs])

    def continuation_ids(self, text: str) -> list[int]:
        """A given continuation's tokens: ``tokenizer(text, add_special_tokens=False)``."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_id(self, token: str) -> int | None:
        """The id of a contrast target: a vocabulary token (``Ġgood``) or a text that is exactly one token
        (`` good``); None when it is neither."""
        vocab = self.tokenizer.get_vocab()
        if token in vocab:
            return int(vocab[token])
        ids = self.continuation_ids(token)
        return ids[0] if len(ids) == 1 else None

    def extend(self, encoding: Encoding, ids: list[int]) -> Encoding:
        """Item 0 of `encoding` with the token ids appended (generated or given: no span in the prompt)."""
        one = encoding.item(0)
        if not ids:
            return one
        n = len(one.tokens[0])
        new = torch.tensor([ids], dtype=torch.long, device=one.input_ids.device)
        specials = set(self.tokenizer.all_special_ids)
        return Encoding(input_ids=torch.cat([one.input_ids, new], 1),
                        attention_mask=torch.ones((1, n + len(ids)), dtype=torch.long, device=new.device),
                        tokens=[one.tokens[0] + self.token_strings(ids)],
                        special=[one.special[0] + [i in specials for i in ids]],
                        words=[one.words[0] + [[n + k] for k in range(len(ids))]],
                        offsets=[one.offsets[0] + [(0, 0)] * len(ids)], segments=[[0] * (n + len(ids))],
                        inputs=one.inputs)

    # ---------------------------------------------------------------- runs
    def embed(self, encoding: Encoding) -> torch.Tensor:
        return self.model.get_input_embeddings()(encoding.input_ids.to(self.device))

    def embedding_std(self) -> float | None:
        return float(self.model.get_input_embeddings().weight.std())

    def layer_mask(self, name: str, encoding: Encoding) -> torch.Tensor | None:
        """B×T bool: every layer has one row per token (padding on the right is False)."""
        return encoding.attention_mask.to(self.device).bool()

    def forward(self, x: torch.Tensor, encoding: Encoding, capture: Iterable[str] = (),
                upto: str | None = None) -> Trace:
        """x: B×T×K. One pass of the whole model (a decoder's layers are cheap next to the bookkeeping of
        stopping early); ``layers``/``attention`` as captured. Logits at every position only when ``output`` is
        captured; else only at each item's last real token."""
        capture = set(capture)
        mask = encoding.attention_mask.to(x.device)
        last = (mask.sum(1) - 1).clamp(min=0)
        hidden = any(n.startswith("layer.") for n in capture)
        attentions = any(n.startswith("attention.") for n in capture)
        every = "output" in capture

        def call(**kw: Any) -> Any:
            return self.model(inputs_embeds=x, attention_mask=mask, output_hidden_states=hidden,
                              output_attentions=attentions, use_cache=False, **kw)

        out, logits = self.logits_at(call, None if every else last.view(-1, 1))
        rows = torch.arange(x.shape[0], device=x.device)
        trace = Trace(logits=logits[rows, last] if every else logits[:, 0])
        if "embeddings" in capture:
            trace.layers["embeddings"] = x
        for k in range(1, self.num_layers + 1):
            if f"layer.{k}" in capture:
                trace.layers[f"layer.{k}"] = out.hidden_states[k]
            if f"attention.{k}" in capture:
                trace.attention[f"attention.{k}"] = out.attentions[k - 1]
        if every:
            trace.layers["output"] = logits
        return trace

    def sequence_logits(self, x: torch.Tensor, positions: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """Next-token logits at `positions` (n: the same for every row; or B×n, each row's own) from embeddings x
        (B×T×K, rows of one sequence, no padding; every step at once, no cache): B×n×V. (`prompt_length`: what an
        encoder–decoder splits x by; a causal LM reads every row alike.)"""
        return self.logits_at(lambda **kw: self.model(inputs_embeds=x, use_cache=False, **kw), positions)[1]

    def logits_at(self, call: Callable[..., Any], positions: torch.Tensor | None) -> tuple[Any, torch.Tensor]:
        """(the model's output, its logits at `positions`: n or B×n → B×n×V; None → every position) for
        ``call(**kw)``, a run of the model that passes `kw` on (``logits_to_keep``, as the model takes it)."""
        _ = self.model  # loads it (and probes self._keep)
        if positions is None:
            out = call()
            return out, out.logits
        positions = positions.to(self.device)
        if self._keep == "per_item" or (self._keep == "shared" and positions.ndim == 1):
            out = call(logits_to_keep=positions)
            return out, out.logits
        kept = torch.unique(positions) if self._keep == "shared" else None  # the union; None: every position
        out = call(logits_to_keep=kept) if kept is not None else call()
        index = positions if kept is None else torch.searchsorted(kept, positions)
        return out, pick(out.logits, index)

    def generate(self, ids: list[int], max_new_tokens: int, do_sample: bool = False, seed: int = 0) -> list[int]:
        """Up to `max_new_tokens` ids after the prompt ids: greedy (default) or sampled with `seed`; stops after
        EOS (included) and at the model's context."""
        room = min(max_new_tokens, self.max_tokens - len(ids))
        if room <= 0:
            return []
        prompt = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            torch.manual_seed(seed)
            out = self.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=room,
                                      min_new_tokens=1, do_sample=do_sample, num_beams=1,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                                      **({} if do_sample else {"temperature": None, "top_p": None, "top_k": None}))
        return [int(i) for i in out[0, len(ids):]]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["generative"] = {"context": self.max_tokens, "vocab_size": len(self.vocab),
                              "bos_token": self.tokenizer.bos_token, "eos_token": self.tokenizer.eos_token}
        return info


def pick(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Columns `index` (n for every row, or B×n) of B×T×V logits: B×n×V."""
    if index.ndim == 1:
        return logits[:, index]
    return torch.take_along_dim(logits, index.unsqueeze(-1), dim=1)


def keep_mode(logits: Callable[..., torch.Tensor], device: torch.device) -> str:
    """How a model takes ``logits_to_keep`` (``logits(ids, **kw)`` runs it on B×T ids): ``per_item`` (a B×n tensor
    of each row's positions: HF's ``slice_logits_to_keep``), ``shared`` (n positions for every row) or ``none``
    (not at all, or not as documented): each tried on 2×3 ids and kept only if it equals the full logits there."""
    ids = torch.arange(6, device=device).view(2, 3)
    with torch.no_grad():
        full = logits(ids)
        for mode, keep in (("per_item", torch.tensor([[2], [1]], device=device)),
                           ("shared", torch.tensor([1, 2], device=device))):
            try:
                got = logits(ids, logits_to_keep=keep)
            except (TypeError, ValueError, RuntimeError, IndexError):  # a model without the argument
                continue
            want = pick(full, keep)
            if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                return mode
    return "none"


def group_words(word_ids: list[int | None]) -> list[list[int]]:
    """Token indices per word: consecutive tokens of one pre-tokenizer word together; each special alone."""
    groups: list[list[int]] = []
    previous: int | None = None
    for t, w in enumerate(word_ids):
        if w is not None and w == previous and groups:
            groups[-1].append(t)
        else:
            groups.append([t])
        previous = w
    return groups
