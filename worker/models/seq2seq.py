"""The seq2seq adapter for the synthetic reverse-sequence task (Guan et al. 2019 §4.1, Fig. 2): an LSTM encoder, an
LSTM decoder with (Luong, "general") attention over the encoder, teacher-forced on the reversed input.

Input and tokens: a text of the words ``a b c d`` separated by spaces, e.g. ``"a b c"``. The encoding is one
sequence, so that x (what sigma perturbs and gradients reach) covers the inputs of both halves, as in Guan's Fig. 2::

    <sos> a b c <eos> | <sos> c b a        segment 0 = encoder inputs, segment 1 = decoder inputs
                                           (the decoder is fed the reversed text: the task's answer)

Decoder step t reads decoder input t and predicts the next word of the answer (``c b a <eos>``). Decoder tokens are
copies of text words: their offsets point at the word they copy.

Layers (docs/api.md, layer names, timestamp mode): ``embeddings`` (x, B×T×K), ``encoder`` (B×T_enc×H, the top encoder LSTM layer
per encoder position), ``decoder`` (B×T_dec×H, one state per decoder step: the attentional state
d_t = tanh(W_c[h_t; c_t]) from which the next word is predicted; h_t is the top decoder LSTM state, c_t the attention
context), ``output`` (B×T_dec×V: the logits over the vocabulary at each step, W_o·d_t). Attention ``attention``:
B×1×T_dec×T_enc, softmax over encoder positions of h_tᵀ·W_a·e_s per step (padded positions at exactly 0).
Padded positions and steps hold zeros; :meth:`Seq2SeqAdapter.layer_mask` gives the real ones per layer.

There is no classification head (``labels`` is null): methods that need a target score S(y) do not apply. For sigma, s
of a layer is all its states (e.g. every decoder step: Guan's timestamps are the rows of ``decoder``).

``config["model"]``: ``embedding_size``, ``hidden_size``, ``layers``, ``dropout``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from worker.capabilities import Capability
from worker.models.base import Encoding, InputError
from worker.models.bilstm import run_packed
from worker.models.native import NativeAdapter
from worker.models.words import tokenize

SOS, EOS = "<sos>", "<eos>"
WORDS = ("a", "b", "c", "d")


def split_halves(x: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor):
    """x B×T×K of [encoder tokens | decoder tokens | padding] -> (x_enc, enc_mask, x_dec, dec_mask), each half
    left-aligned and padded to its own width."""
    enc_mask = mask & (segments == 0)
    dec_mask = mask & (segments == 1)
    enc_len, dec_len = enc_mask.sum(1), dec_mask.sum(1)
    width_enc, width_dec = int(enc_len.max()), int(dec_len.max())
    steps = torch.arange(width_dec, device=x.device)
    index = (enc_len.unsqueeze(1) + steps).clamp(max=x.shape[1] - 1)  # B×T_dec positions of the decoder tokens
    x_dec = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    return x[:, :width_enc], enc_mask[:, :width_enc], x_dec, steps < dec_len.unsqueeze(1)


class ReverseSeq2Seq(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, layers: int, dropout: float = 0.0):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_size, padding_idx=0)
        lstm_dropout = dropout if layers > 1 else 0.0
        self.encoder = nn.LSTM(embedding_size, hidden_size, layers, batch_first=True, dropout=lstm_dropout)
        self.decoder = nn.LSTM(embedding_size, hidden_size, layers, batch_first=True, dropout=lstm_dropout)
        self.attend = nn.Linear(hidden_size, hidden_size, bias=False)  # W_a
        self.combine = nn.Linear(2 * hidden_size, hidden_size)  # W_c
        self.output = nn.Linear(hidden_size, vocab_size)  # W_o

    def steps(self, x: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        yield "embeddings", x
        x_enc, enc_mask, x_dec, dec_mask = split_halves(x, mask, segments)
        encoded, state = run_packed(self.encoder, x_enc, enc_mask)
        yield "encoder", encoded
        top, _ = run_packed(self.decoder, x_dec, dec_mask, state)
        scores = top @ self.attend(encoded).transpose(1, 2)  # B×T_dec×T_enc
        attention = scores.masked_fill(~enc_mask.unsqueeze(1), float("-inf")).softmax(-1)
        yield "attention", attention.unsqueeze(1)
        decoded = torch.tanh(self.combine(torch.cat([top, attention @ encoded], -1)))
        decoded = decoded * dec_mask.unsqueeze(-1).to(decoded.dtype)
        yield "decoder", decoded
        yield "output", self.output(decoded) * dec_mask.unsqueeze(-1).to(decoded.dtype)


class Seq2SeqAdapter(NativeAdapter):
    kind = "seq2seq"
    offers = NativeAdapter.offers | {Capability.SEQUENCE_OUTPUT}

    @staticmethod
    def architecture(h: dict[str, Any], vocab_size: int, classes: int) -> ReverseSeq2Seq:
        return ReverseSeq2Seq(vocab_size, int(h["embedding_size"]), int(h["hidden_size"]), int(h["layers"]),
                              float(h.get("dropout", 0.0)))

    def step_names(self) -> list[str]:
        return ["embeddings", "encoder", "attention", "decoder", "output"]

    def layout(self, text: str) -> list[tuple[str, bool, tuple[int, int], int]]:
        words = tokenize(text)
        unknown = sorted({w for w, _, _ in words if w not in self.vocab or w.startswith("<")})
        if unknown:
            raise InputError(f"{self.name} reads only the words {' '.join(w for w in self.vocab.tokens if w[0] != '<')}"
                             f" separated by spaces; not {', '.join(unknown)}")
        if not words:
            return []
        encoder = [(SOS, True, (0, 0), 0), *((w, False, (a, b), 0) for w, a, b in words), (EOS, True, (0, 0), 0)]
        decoder = [(SOS, True, (0, 0), 1), *((w, False, (a, b), 1) for w, a, b in reversed(words))]
        return encoder + decoder

    def inputs(self, encoding: Encoding) -> dict[str, torch.Tensor]:
        segments = torch.zeros_like(encoding.attention_mask)
        for i, row in enumerate(encoding.segments):
            segments[i, : len(row)] = torch.tensor(row)
        return {**super().inputs(encoding), "segments": segments.to(self.device)}

    def layer_mask(self, name: str, encoding: Encoding) -> torch.Tensor | None:
        """``encoder``: B×T_enc real encoder positions; ``decoder``/``output``: B×T_dec real steps; else tokens."""
        if name not in ("encoder", "decoder", "output"):
            return super().layer_mask(name, encoding)
        inputs = self.inputs(encoding)
        mask, segment = inputs["mask"], 0 if name == "encoder" else 1
        lengths = (mask & (inputs["segments"] == segment)).sum(1)
        return torch.arange(int(lengths.max()), device=mask.device) < lengths.unsqueeze(1)

    def answer(self, encoding: Encoding) -> list[list[str]]:
        """Per item, the words the decoder predicts at its steps, given the teacher-forced decoder inputs (the last
        should be ``<eos>``). Where every step is right this is also the greedy decoding."""
        with torch.no_grad():
            logits = self.forward(self.embed(encoding), encoding, capture=["output"]).layers["output"]
        steps = self.layer_mask("output", encoding)
        assert steps is not None  # "output" has a row per decoder step
        return [[self.vocab.tokens[int(t)] for t in row[real]] for row, real in zip(logits.argmax(-1), steps, strict=True)]
