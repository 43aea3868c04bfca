"""The LSTM language model with attention (``lstm-lm-rt``; docs/api.md, layer names): a word-level, textgenrnn-style next-word
model whose prediction at every position is read from an attention-weighted average over the history.

Input and tokens: a text, tokenised into words (:mod:`worker.models.words`), after a start token ``<s>`` (special,
position 0) as in textgenrnn. Position t reads tokens 0..t and predicts token t+1; the last real position predicts
the word that would follow the text. The vocabulary also holds ``</s>`` (the end of a sentence: a word the model can
predict, never part of an encoding).

Architecture (after textgenrnn, Woolf 2017, word level)::

    e_t = embeddings[token_t]                                       (K)
    h¹_t = LSTM₁(e_≤t),  h²_t = LSTM₂(h¹_≤t), …                     (H each, unidirectional: causal)
    f_t = [e_t; h¹_t; …; hᴸ_t]                                       (F = K + L·H: textgenrnn's skip connections)
    α_{t,s} = softmax_{s ≤ t}(w · f_s)                              (causal AttentionWeightedAverage)
    c_t = Σ_{s ≤ t} α_{t,s} f_s
    logits_t = W_o c_t + b_o                                         (V: the next word after position t)

textgenrnn's AttentionWeightedAverage scores each position with one learned vector w (no query) and averages over its
whole input window; here the window of position t is its history 0..t, so row t of the attention is what the model
reads when it predicts the word after token t, i.e. the blog's heat map row for that generated step.

Layers (docs/api.md, layer names): ``embeddings`` (x, B×T×K), ``lstm.1`` … ``lstm.L`` (B×T×H), ``output`` (B×T×V: the next-word
logits at every position, timestamp mode like the seq2seq adapter's). Attention ``history``: B×1×T×T, row t =
α_{t,·}: exact zeros for s > t, at padded columns, and in padded rows. Padded positions of every layer hold zeros;
:meth:`LSTMLanguageModelAdapter.layer_mask` gives the real ones (all layers are per token, ``output`` included).

The head: ``labels`` = the vocabulary (a target is a word, e.g. ``"target": "film"``) and ``Trace.logits`` = B×V,
the ``output`` row at each item's last real position. So every method that scores S(y) (gradient, occlusion,
integrated gradients, …) explains "which history words drive the predicted next word after the text".
:meth:`generate` extends a text greedily (used by the ``attention`` method's language-model view).

``config.json`` says ``"labels": "vocab"`` (the labels are vocab.txt, which must hold ``<pad> <unk> <s> </s>``);
``describe()`` lists them all (a few thousand words), the job result's ``prediction.probabilities`` only the most
probable (:data:`worker.methods.PREDICTION_TOP`).

LRP (the ``lrp_rules`` capability; :mod:`worker.models.relevance`): the LSTM rules of Arras et al. 2017 in every
layer, the ε-rule on the attention score w · f_s and the output layer, AttnLRP's uniform rule on α · f (the weights
and the features each get half) and its softmax rule on α. ``config["model"]``: ``embedding_size``, ``hidden_size``,
``layers``, ``dropout`` (training only).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from worker.capabilities import Capability
from worker.models import relevance
from worker.models.base import Encoding, InputError, Trace
from worker.models.bilstm import run_packed
from worker.models.bundle import BundleSpec
from worker.models.native import NativeAdapter
from worker.models.protocols import ScoreTarget
from worker.models.words import PAD, UNK, tokenize

BOS, EOS = "<s>", "</s>"
SPECIALS = (BOS, EOS)  # after <pad>, <unk> in vocab.txt


class AttentionLM(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, layers: int, dropout: float = 0.0):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_size, padding_idx=0)
        self.lstm = nn.ModuleList(
            nn.LSTM(embedding_size if k == 0 else hidden_size, hidden_size, batch_first=True) for k in range(layers))
        features = embedding_size + layers * hidden_size
        self.attend = nn.Linear(features, 1, bias=False)  # w: textgenrnn's AttentionWeightedAverage
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(features, vocab_size)

    def steps(self, x: torch.Tensor, mask: torch.Tensor, ops: relevance.Ops = relevance.PLAIN
              ) -> Iterator[tuple[str, torch.Tensor]]:
        """The layers in order; with ``ops`` = :class:`~worker.models.relevance.Rules`, LRP's rules (module
        docstring) with the same values."""
        yield "embeddings", x
        real = mask.unsqueeze(-1).to(x.dtype)
        features, hidden = [x * real], x
        for k, lstm in enumerate(self.lstm, 1):
            if isinstance(ops, relevance.Rules):
                hidden = relevance.lstm(lstm, hidden, mask, ops.eps)
            else:
                hidden, _ = run_packed(lstm, self.dropout(hidden), mask)
            features.append(hidden)
            yield f"lstm.{k}", hidden
        f = self.dropout(torch.cat(features, -1))  # B×T×F
        weights = causal_attention(ops.linear(self.attend(f)).squeeze(-1), mask)  # B×T×T
        yield "history", weights.unsqueeze(1)
        yield "output", self.output(ops.matmul(weights, f)) * real

    def run(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer of one full run (training, tests)."""
        return dict(self.steps(x, mask))


def causal_attention(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scores B×T (w · f_s), mask B×T bool -> B×T×T: row t = softmax over the real s ≤ t; padded rows are 0."""
    t = scores.shape[1]
    allowed = torch.ones((t, t), dtype=torch.bool, device=scores.device).tril() & mask.unsqueeze(1)
    weights = scores.unsqueeze(1).expand(-1, t, -1).masked_fill(~allowed, float("-inf"))
    # every row has a real s ≤ t (position 0 is real), so no row is all -inf; padded rows are zeroed after
    weights = weights.softmax(-1)
    return weights * mask.unsqueeze(-1).to(weights.dtype)


class LSTMLanguageModelAdapter(NativeAdapter):
    kind = "lstm_lm"
    offers = NativeAdapter.offers | {Capability.NEXT_WORD, Capability.SEQUENCE_OUTPUT, Capability.LRP_RULES}
    end_of_text = EOS

    def __init__(self, spec: BundleSpec, revision: str):
        super().__init__(spec, revision)
        self.attention_names = ["history"]
        self.layer_names = [n for n in self.step_order if n != "history"]
        self.bos_id, self.eos_id = self.vocab.id(BOS), self.vocab.id(EOS)

    def _check_config(self) -> None:
        """``labels`` is the string ``"vocab"``: the labels are the vocabulary (vocab.txt), in id order."""
        if self.config.get("labels") != "vocab":
            raise InputError('config.json: a language model\'s labels are its vocabulary: "labels": "vocab"')
        self.config = {**self.config, "labels": None}  # the base checks the rest; labels are set from vocab.txt
        try:
            super()._check_config()
        finally:
            self.config = self.spec.config

    def _check_weights(self) -> None:
        missing = [t for t in (PAD, UNK, *SPECIALS) if t not in self.vocab]
        if missing:
            raise InputError(f"vocab.txt: a language model's vocabulary needs {', '.join(missing)}")
        self.labels = list(self.vocab.tokens)
        super()._check_weights()

    @staticmethod
    def architecture(h: dict[str, Any], vocab_size: int, classes: int) -> AttentionLM:
        return AttentionLM(vocab_size, int(h["embedding_size"]), int(h["hidden_size"]), int(h["layers"]),
                           float(h.get("dropout", 0.0)))

    def step_names(self) -> list[str]:
        return ["embeddings", *(f"lstm.{k}" for k in range(1, int(self.hyper["layers"]) + 1)), "history", "output"]

    def layout(self, text: str) -> list[tuple[str, bool, tuple[int, int], int]]:
        words = tokenize(text)
        if not words:
            return []
        return [(BOS, True, (0, 0), 0), *((w, False, (a, b), 0) for w, a, b in words)]

    def layer_mask(self, name: str, encoding: Encoding) -> torch.Tensor | None:
        """B×T bool: every layer (``output`` too) has one row per token."""
        return encoding.attention_mask.to(self.device).bool()

    def forward(
        self,
        x: torch.Tensor,
        encoding: Encoding,
        capture: Iterable[str] = (),
        upto: str | None = None,
    ) -> Trace:
        """x: B×T×K. ``logits`` = B×V next-word logits after each item's last real token (only when the run reaches
        ``output``); ``layers``/``attention`` as captured; nothing after `upto` is computed."""
        capture = list(dict.fromkeys(capture))
        stop = self._stop(capture, upto)
        inputs = self.inputs(encoding)
        trace = Trace(logits=None)
        for name, value in self.module.steps(x, **inputs):
            if name == "output":
                last = (inputs["mask"].sum(1) - 1).clamp(min=0)
                trace.logits = value[torch.arange(value.shape[0], device=value.device), last]
            if name in capture:
                (trace.attention if name in self.attention_names else trace.layers)[name] = value
            if name == stop:
                break
        return trace

    def lrp_relevance(self, x: torch.Tensor, mask: torch.Tensor, target: ScoreTarget, epsilon: float,
                      encoding: Encoding | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``lrp_rules`` capability: relevance of the next-word logit after each item's last real token."""
        module, last = self.module, (mask.sum(1) - 1).clamp(min=0)

        def logits(e: torch.Tensor) -> torch.Tensor:
            output = dict(module.steps(e, mask, relevance.Rules(epsilon)))["output"]
            return output[torch.arange(output.shape[0], device=output.device), last]

        return relevance.input_relevance(x, logits, target, epsilon)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["target"] = "the next word after the text (labels = the vocabulary)"
        return info

    # ---------------------------------------------------------------- generation
    def extend(self, encoding: Encoding, words: list[str]) -> Encoding:
        """Item 0 of `encoding` with `words` (vocabulary tokens) appended: generated tokens have no span in the text
        (offsets (0, 0)); ``</s>`` is flagged special."""
        one = encoding.item(0)
        if not words:
            return one
        ids = torch.tensor([[self.vocab.id(w) for w in words]], device=one.input_ids.device)
        n = len(one.tokens[0])
        return dataclasses.replace(
            one,
            input_ids=torch.cat([one.input_ids, ids], 1),
            attention_mask=torch.ones((1, n + len(words)), dtype=one.attention_mask.dtype,
                                      device=one.attention_mask.device),
            tokens=[one.tokens[0] + list(words)],
            special=[one.special[0] + [w in (BOS, EOS) for w in words]],
            words=[[[t] for t in range(n + len(words))]],
            offsets=[one.offsets[0] + [(0, 0)] * len(words)],
            segments=[one.segments[0] + [0] * len(words)],
        )

    def allowed(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (…×V) with the tokens greedy decoding never picks (``<pad>``, ``<unk>``, ``<s>``) at -inf."""
        banned = [self.vocab.id(PAD), self.vocab.id(UNK), self.bos_id]
        return logits.index_fill(-1, torch.tensor(banned, device=logits.device), float("-inf"))

    def generate(self, encoding: Encoding, n: int) -> list[str]:
        """Greedily (deterministic) up to n words after item 0's text: at each step the highest-scoring word other
        than ``<pad>``/``<unk>``/``<s>``; stops after ``</s>`` or when the sequence reaches ``max_tokens``."""
        out: list[str] = []
        with torch.no_grad():
            while len(out) < n and len(encoding.tokens[0]) + len(out) < self.max_tokens:
                seq = self.extend(encoding, out)
                logits = self.forward(self.embed(seq), seq).head_logits()[0]
                out.append(self.vocab.tokens[int(self.allowed(logits).argmax())])
                if out[-1] == EOS:
                    break
        return out
