"""The Hugging Face encoder–decoder language model adapter: any local ``AutoModelForSeq2SeqLM`` folder of a text
encoder–decoder the pinned transformers supports natively (T5, mT5, BART, mBART, Pegasus, Marian, …); safetensors
only, local files only, no remote code.

Input: ``{"prompt": text}`` (the encoder's source), optionally ``"continuation"`` (the decoder's target, forced
decoding; docs/api.md, generative models). One explained sequence of T tokens lays the two side by side:

    source tokens (exactly ``AutoTokenizer.from_pretrained(dir)(prompt)``, its specials included, e.g. ``</s>``)
    · the decoder start token · the S generated or given tokens

so P (``prompt_length``) = source length + 1 and the logits of step s sit at position P−1+s, as for a causal LM
(:mod:`worker.methods.generation` needs nothing else). ``Encoding.segments`` says which side a token is on: 0 =
source (encoder), 1 = decoder. x (B×T×K) is each token's input embedding as its stack reads it (the encoder's or
the decoder's ``embed_tokens``, BART's ``sqrt(d)`` scaling included), fed as ``inputs_embeds`` /
``decoder_inputs_embeds``; attributions therefore cover source and decoder tokens alike.

Layers (docs/api.md, layer names), all in the sequence's frame (position t = token t; a stack's tensors are zero at
the other stack's positions, ``layer_mask`` says which rows are real): ``embeddings`` (x), ``encoder.layer.1`` …
``encoder.layer.Le`` (``encoder_hidden_states[k]``), ``decoder.layer.1`` … ``decoder.layer.Ld``
(``decoder_hidden_states[k]``), ``output`` (B×T×V next-token logits at decoder positions). Attention (B×heads×T×T
after softmax, queries × keys): ``encoder.attention.k`` (source × source), ``decoder.attention.k`` (decoder ×
decoder, causal), ``cross_attention.k`` (decoder × source), listed in forward order (encoder blocks, then each
decoder block's self- and cross-attention), so that attention rollout composes them as information flows: a row
a map does not have (a decoder token in an encoder map, a source token in a decoder map) is zero, which rollout's
renormalised residual turns into the identity. ``Trace.logits`` = B×V, the logits after each item's last token.

Logits only where they are read, as for a causal LM (:mod:`worker.models.causal_lm`): decoder logits at each item's
last token for ``Trace.logits``, at the asked positions for ``sequence_logits(x, positions, prompt_length)`` (every
step at once), which splits x after its first ``prompt_length − 1`` rows (the source; the decoder start is P−1).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.capabilities import Capability
from worker.models.base import Encoding, InputError, Trace
from worker.models.bundle import BundleSpec
from worker.models.causal_lm import CausalLMAdapter

Span = tuple[int, int]  # (first position, count) of one item's tokens on one side


class Seq2SeqLMAdapter(CausalLMAdapter):
    """A Hugging Face encoder–decoder LM from a local directory (module docstring). It shares the causal adapter's
    tokenizer handling (prompt rows, continuation ids, contrast tokens, token strings) and overrides the rest."""

    offers = frozenset({Capability.GENERATION})

    def __init__(self, spec: BundleSpec, revision: str):
        super().__init__(spec, revision)
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

        config = self.config
        if not getattr(config, "is_encoder_decoder", False) or config.model_type not in \
                MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            raise InputError(f"model_type {config.model_type!r} is not a text encoder–decoder LM this transformers "
                             "loads with AutoModelForSeq2SeqLM")
        self.decoder_start_id = getattr(config, "decoder_start_token_id", None)
        if self.decoder_start_id is None:
            raise InputError("the model's config has no decoder_start_token_id")
        self.encoder_layers = _count(config, "encoder_layers", "num_layers")
        self.decoder_layers = _count(config, "decoder_layers", "num_decoder_layers", "num_layers")
        self.num_layers = self.decoder_layers  # the blocks that generate
        context = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 0)
        # source + decoder tokens together: within both stacks' position limits (T5's relative positions have none)
        self.max_tokens = context if 0 < context < 1_000_000 else 512
        self.layer_names = ["embeddings", *(f"encoder.layer.{k}" for k in range(1, self.encoder_layers + 1)),
                            *(f"decoder.layer.{k}" for k in range(1, self.decoder_layers + 1)), "output"]
        # in forward order (what attention rollout composes): the encoder's, then per decoder block its
        # self-attention and then its cross-attention
        self.attention_names = [*(f"encoder.attention.{k}" for k in range(1, self.encoder_layers + 1)),
                                *(f"{kind}.{k}" for k in range(1, self.decoder_layers + 1)
                                  for kind in ("decoder.attention", "cross_attention"))]

    auto_class = "AutoModelForSeq2SeqLM"

    @staticmethod
    def _probe(model: nn.Module):
        return lambda ids, **kw: model(input_ids=ids, decoder_input_ids=ids, use_cache=False, **kw).logits

    # ---------------------------------------------------------------- tokens
    def encode(self, inputs: dict[str, str] | Iterable[dict[str, str]]) -> Encoding:
        """The prompt(s) as ``tokenizer(prompt)`` gives them, then the decoder start token (segment 1)."""
        return super().encode(inputs)

    def _row(self, prompt: str) -> dict[str, Any]:
        row = super()._row(prompt)
        return {"ids": row["ids"] + [self.decoder_start_id], "special": row["special"] + [True],
                "offsets": row["offsets"] + [(0, 0)], "word_ids": row["word_ids"] + [None]}

    def _encoding(self, rows: list[dict[str, Any]], inputs: list[dict[str, str]]) -> Encoding:
        encoding = super()._encoding(rows, inputs)
        encoding.segments = [[0] * (len(r["ids"]) - 1) + [1] for r in rows]
        return encoding

    def extend(self, encoding: Encoding, ids: list[int]) -> Encoding:
        """Item 0 of `encoding` with the token ids appended on the decoder side."""
        out = super().extend(encoding, ids)
        out.segments = [encoding.segments[0] + [1] * (len(out.tokens[0]) - len(encoding.segments[0]))]
        return out

    @staticmethod
    def _spans(encoding: Encoding) -> tuple[list[Span], list[Span]]:
        """Per item, the (start, count) of its source tokens and of its decoder tokens."""
        sources = [seg.count(0) for seg in encoding.segments]
        return ([(0, n) for n in sources],
                [(n, len(seg) - n) for n, seg in zip(sources, encoding.segments, strict=True)])

    # ---------------------------------------------------------------- runs
    def embed(self, encoding: Encoding) -> torch.Tensor:
        """B×T×K: source tokens through the encoder's embedding, decoder tokens through the decoder's (one shared,
        scaled table for T5 and BART; each stack's own where a model has two)."""
        ids = encoding.input_ids.to(self.device)
        source = torch.tensor([[s == 0 for s in seg] + [True] * (ids.shape[1] - len(seg))
                               for seg in encoding.segments], device=self.device)
        model = self.model
        encoder = model.get_encoder().get_input_embeddings()(ids)
        decoder = model.get_decoder().get_input_embeddings()(ids)
        return torch.where(source.unsqueeze(-1), encoder, decoder)

    def layer_mask(self, name: str, encoding: Encoding) -> torch.Tensor | None:
        """B×T bool: the positions a layer has real rows at (its own stack's tokens)."""
        real = encoding.attention_mask.to(self.device).bool()
        segment = torch.tensor([seg + [1] * (real.shape[1] - len(seg)) for seg in encoding.segments],
                               device=self.device)
        if name.startswith("encoder."):
            return real & (segment == 0)
        if name.startswith("decoder.") or name == "output":
            return real & (segment == 1)
        return real

    def _call(self, x: torch.Tensor, sources: list[Span], targets: list[Span], hidden: bool = False,
              attentions: bool = False) -> Callable[..., Any]:
        """A run of the model (``call(**kw)``, `kw` passed on) on each item's source rows of x (encoder) and its
        decoder rows, both padded on the right."""
        N, D = max(n for _, n in sources), max(n for _, n in targets)

        def side(spans: list[Span], width: int) -> tuple[torch.Tensor, torch.Tensor]:
            rows = torch.stack([F.pad(x[i, a:a + n], (0, 0, 0, width - n)) for i, (a, n) in enumerate(spans)])
            mask = torch.tensor([[1] * n + [0] * (width - n) for _, n in spans], device=x.device)
            return rows, mask

        (enc, enc_mask), (dec, dec_mask) = side(sources, N), side(targets, D)
        return lambda **kw: self.model(inputs_embeds=enc, attention_mask=enc_mask, decoder_inputs_embeds=dec,
                                       decoder_attention_mask=dec_mask, output_hidden_states=hidden,
                                       output_attentions=attentions, use_cache=False, **kw)

    def forward(self, x: torch.Tensor, encoding: Encoding, capture: Iterable[str] = (),
                upto: str | None = None) -> Trace:
        """x: B×T×K. One pass of the whole model; ``layers``/``attention`` as captured, in the sequence's frame.
        Decoder logits at every position only when ``output`` is captured; else at each item's last token."""
        capture, T = set(capture), x.shape[1]
        sources, targets = self._spans(encoding)
        every = "output" in capture
        last = torch.tensor([[n - 1] for _, n in targets])
        out, logits = self.logits_at(self._call(x, sources, targets, hidden=any(".layer." in n for n in capture),
                                                attentions=any("attention." in n for n in capture)),
                                     None if every else last)
        trace = Trace(logits=torch.stack([logits[i, n - 1] for i, (_, n) in enumerate(targets)]) if every
                      else logits[:, 0])
        if "embeddings" in capture:
            trace.layers["embeddings"] = x
        if every:
            trace.layers["output"] = _tokens(logits, targets, T)
        for side, states, spans in (("encoder", out.encoder_hidden_states, sources),
                                    ("decoder", out.decoder_hidden_states, targets)):
            for k in range(1, len(states or ())):
                if f"{side}.layer.{k}" in capture:
                    trace.layers[f"{side}.layer.{k}"] = _tokens(states[k], spans, T)
        for name, maps, queries, keys in (("encoder.attention", out.encoder_attentions, sources, sources),
                                          ("decoder.attention", out.decoder_attentions, targets, targets),
                                          ("cross_attention", out.cross_attentions, targets, sources)):
            for k in range(1, len(maps or ()) + 1):
                if f"{name}.{k}" in capture:
                    trace.attention[f"{name}.{k}"] = _pairs(maps[k - 1], queries, keys, T)
        return trace

    def sequence_logits(self, x: torch.Tensor, positions: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """Next-token logits at `positions` of the sequence's frame (n, or B×n per row; decoder positions, ≥ P−1)
        from embeddings x of rows of one sequence (no padding) whose first ``prompt_length − 1`` rows are the source
        (the encoder's): B×n×V."""
        n, T = prompt_length - 1, x.shape[1]
        if not 0 < n < T or int(positions.min()) < n:
            raise InputError(f"{self.name}: positions {positions.tolist()} of {T} tokens are not decoder positions "
                             f"after a source of {n}")
        B = x.shape[0]
        return self.logits_at(self._call(x, [(0, n)] * B, [(n, T - n)] * B), positions - n)[1]

    def generate(self, ids: list[int], max_new_tokens: int, do_sample: bool = False, seed: int = 0) -> list[int]:
        """Up to `max_new_tokens` ids after the decoder start (`ids` = source + start): greedy (default) or sampled
        with `seed`; stops after EOS (included) and at the context."""
        room = min(max_new_tokens, self.max_tokens - len(ids))
        if room <= 0:
            return []
        from transformers import DynamicCache, EncoderDecoderCache

        source = torch.tensor([ids[:-1]], device=self.device)
        # a cache of our own: the one generate() builds is sized from the encoder's depth, and a decoder deeper than
        # its encoder (T5's num_decoder_layers) indexes past its end
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        with torch.no_grad():
            torch.manual_seed(seed)
            out = self.model.generate(source, attention_mask=torch.ones_like(source), max_new_tokens=room,
                                      past_key_values=cache,
                                      min_new_tokens=1, do_sample=do_sample, num_beams=1,
                                      decoder_start_token_id=ids[-1], pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id,
                                      **({} if do_sample else {"temperature": None, "top_p": None, "top_k": None}))
        return [int(i) for i in out[0, 1:]]  # out[0, 0] is the decoder start token

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["generative"].update({"encoder_decoder": True, "encoder_layers": self.encoder_layers,
                                   "decoder_layers": self.decoder_layers,
                                   "decoder_start_token": self.tokenizer.convert_ids_to_tokens(self.decoder_start_id)})
        return info


def _count(config: Any, *names: str) -> int:
    """The first positive layer count among a config's attribute names (T5: num_layers, BART: encoder_layers…)."""
    for name in names:
        value = int(getattr(config, name, 0) or 0)
        if value > 0:
            return value
    raise InputError(f"the model's config has none of {names}")


def _tokens(values: torch.Tensor, spans: list[Span], T: int) -> torch.Tensor:
    """B×L×H per-side rows placed at each item's span of a T-long frame (zeros elsewhere): B×T×H."""
    return torch.stack([F.pad(values[i, :n], (0, 0, a, T - a - n)) for i, (a, n) in enumerate(spans)])


def _pairs(values: torch.Tensor, queries: list[Span], keys: list[Span], T: int) -> torch.Tensor:
    """B×heads×Lq×Lk attention placed at each item's (query span, key span) of a T×T frame: B×heads×T×T."""
    return torch.stack([F.pad(values[i, :, :qn, :kn], (ka, T - ka - kn, qa, T - qa - qn))
                        for i, ((qa, qn), (ka, kn)) in enumerate(zip(queries, keys, strict=True))])
