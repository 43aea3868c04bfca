"""ESIM (Chen et al. 2017) as the appendix of Ghaeini et al. 2018 describes it, with its attention and LSTM gates
exposed for explanation (docs/api.md, layer names).

Premise u (n words) and hypothesis v (m words), embeddings r-d, hidden size d:

1. input encoding:  û = BiLSTM(u), v̂ = BiLSTM(v)                                   (layer ``input_lstm``, B×T×2d)
2. attention:       e_ij = û_i · v̂_j                                              (``align.energy``, B×n×m)
                    ũ_i = Σ_j softmax_j(e_ij) v̂_j,  ṽ_j = Σ_i softmax_i(e_ij) û_i   (``align``, B×2×n×m)
                    p_i = ReLU(W_p [û_i; ũ_i; û_i − ũ_i; û_i ⊙ ũ_i] + b_p), q_j likewise with the same W_p
                                                                                   (``projection``, B×T×d)
3. inference:       p̂ = BiLSTM(p), q̂ = BiLSTM(q)                                  (``inference_lstm``, B×T×2d)
                    pool = [avg p̂; max p̂; avg q̂; max q̂]                            (``pool``, B×8d)
                    logits = W_2 tanh(W_1 pool + b_1) + b_2                          (``output``, B×3)

Labels (softmax order): entailment, neutral, contradiction.

Tokens: the premise's words then the hypothesis's (segment 0, then 1), with optional special tokens around each
sentence (``bos``/``eos`` in the config, as some public checkpoints were trained with them). Per-token layers and
gates are laid out on these joint token positions (premise rows, then hypothesis rows) so that they index like the
tokens; the alignment maps are premise × hypothesis over each sentence's own tokens.

Gates: the LSTMs run as ``nn.LSTM`` (packed) when no gate is asked for (and, on a GPU, no gradient: cuDNN's LSTM
has no backward in eval mode); otherwise the same weights drive a hand-written cell (:func:`lstm_scan`) that yields,
per direction, the input, forget and output gates and the memory cell c_t (``input_lstm.fwd.input`` …
``inference_lstm.bwd.cell``, B×T×d). It reproduces ``nn.LSTM`` to float rounding (tests).

LRP (the ``lrp_rules`` capability; :mod:`worker.models.relevance`): the LSTM rules of Arras et al. 2017 in both
BiLSTMs; the alignment as in AttnLRP (the uniform rule on e = û·v̂ and on the attention-weighted sums, the softmax
rule on the alignment softmaxes), the uniform rule on û ⊙ ũ, ε on the linear layers, identity through ReLU and tanh,
winner-takes-all through the max-pool (the average pool is linear). ``forward(..., gate_offsets={name: B×T×d})`` adds the given tensors to those gates inside the recurrence:
with zero offsets the output is unchanged and ∂S/∂offset = ∂S/∂gate (the gates' saliency, Ghaeini §3.2).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from worker.capabilities import Capability
from worker.models import relevance
from worker.models.base import Encoding, InputError, Trace
from worker.models.native import NativeAdapter, masked_max
from worker.models.protocols import ScoreTarget
from worker.models.words import tokenize

LABELS = ("entailment", "neutral", "contradiction")
LSTMS = ("input_lstm", "inference_lstm")
DIRECTIONS = ("fwd", "bwd")
GATES = ("input", "forget", "output", "cell")
GATE_NAMES = tuple(f"{lstm}.{d}.{g}" for lstm in LSTMS for d in DIRECTIONS for g in GATES)
STEPS = ("embeddings", "input_lstm", "align.energy", "align", "projection", "inference_lstm", "pool", "output")
ATTENTION = ("align", "align.energy")


# ------------------------------------------------------------------------------------------------ the LSTM cell
def gate_key(name: str) -> tuple[str, str]:
    """``<lstm>.<direction>.<gate>`` -> (direction, gate), the key of :func:`lstm_scan`'s gates and offsets."""
    _, direction, gate = name.split(".")
    return direction, gate


def lstm_scan(
    lstm: nn.LSTM,
    x: torch.Tensor,
    lengths: torch.Tensor,
    offsets: dict[tuple[str, str], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[tuple[str, str], torch.Tensor]]:
    """A one-layer bidirectional ``nn.LSTM`` run step by step from its own weights.

    x: B×T×K, real steps first (lengths: B). Returns the output B×T×2H (zeros at padding, as a packed ``nn.LSTM``
    gives) and the gates {(direction, gate): B×T×H} in original time order. ``offsets[(direction, gate)]`` (B×T×H)
    are added to the gate activations (to the memory cell for "cell") inside the recurrence.
    """
    offsets = offsets or {}
    batch, steps, _ = x.shape
    mask = (torch.arange(steps, device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)).unsqueeze(-1)
    outputs, gates = [], {}
    for direction, suffix in zip(DIRECTIONS, ("", "_reverse"), strict=True):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l0{suffix}"), getattr(lstm, f"weight_hh_l0{suffix}")
        bias = getattr(lstm, f"bias_ih_l0{suffix}") + getattr(lstm, f"bias_hh_l0{suffix}")
        order = (lambda t: t) if direction == "fwd" else (lambda t: relevance.reverse_within(t, lengths))
        pre = order(x) @ w_ih.T + bias  # B×T×4H
        offset = {g: order(offsets[(direction, g)]) for g in GATES if (direction, g) in offsets}
        h = x.new_zeros(batch, lstm.hidden_size)
        c = x.new_zeros(batch, lstm.hidden_size)
        record: dict[str, list[torch.Tensor]] = {g: [] for g in GATES}
        hs = []
        for t in range(steps):
            i, f, g, o = (pre[:, t] + h @ w_hh.T).chunk(4, dim=-1)
            values = {"input": torch.sigmoid(i), "forget": torch.sigmoid(f), "output": torch.sigmoid(o)}
            values = {k: v + offset[k][:, t] if k in offset else v for k, v in values.items()}
            cell = values["forget"] * c + values["input"] * torch.tanh(g)
            if "cell" in offset:
                cell = cell + offset["cell"][:, t]
            values["cell"] = cell
            hidden = values["output"] * torch.tanh(cell)
            real = mask[:, t]
            h, c = torch.where(real, hidden, h), torch.where(real, cell, c)
            hs.append(hidden * real)
            for k in GATES:
                record[k].append(values[k] * real)
        outputs.append(order(torch.stack(hs, 1)))
        for k in GATES:
            gates[(direction, k)] = order(torch.stack(record[k], 1))
    return torch.cat(outputs, -1), gates


def sentence_positions(segments: list[list[int]], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """{"premise": B×n, "hypothesis": B×m}: the joint positions of each sentence's tokens, -1 = padding."""
    out = {}
    for segment, key in enumerate(("premise", "hypothesis")):
        places = [[t for t, s in enumerate(segs) if s == segment] for segs in segments]
        index = torch.full((len(places), max(len(p) for p in places)), -1, dtype=torch.long)
        for b, p in enumerate(places):
            index[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        out[key] = index.to(device)
    return out


def fill_rows(t: torch.Tensor, size: int) -> torch.Tensor:
    """B×L×H -> B×size×H, zero rows appended."""
    return nn.functional.pad(t, (0, 0, 0, size - t.shape[1]))


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The packed ``nn.LSTM`` (fast path): B×T×K -> B×T×2H, zeros at padding."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


# ------------------------------------------------------------------------------------------------ the model
class ESIM(nn.Module):
    """The network (module docstring). ``steps`` yields every named intermediate in forward order."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, classes: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        d = hidden_size
        self.embeddings = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.input_lstm = nn.LSTM(embedding_dim, d, batch_first=True, bidirectional=True)
        self.projection = nn.Linear(8 * d, d)
        self.inference_lstm = nn.LSTM(d, d, batch_first=True, bidirectional=True)
        self.hidden = nn.Linear(8 * d, d)
        self.output = nn.Linear(d, classes)
        self.dropout = nn.Dropout(dropout)

    def _lstm(self, name: str, x: torch.Tensor, lengths: torch.Tensor, gates: bool,
              offsets: dict[str, torch.Tensor], ops: relevance.Ops) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lstm = getattr(self, name)
        if isinstance(ops, relevance.Rules):  # LRP: the LSTM rules, no gates asked for
            real = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)
            return relevance.lstm(lstm, x, real, ops.eps), {}
        # cuDNN's LSTM has no backward in eval mode: on a GPU, gradients go through the hand-written cell
        if not gates and not offsets and not (x.is_cuda and torch.is_grad_enabled()):
            return run_lstm(lstm, x, lengths), {}
        mine = {gate_key(k): v for k, v in offsets.items() if k.startswith(name + ".")}
        out, found = lstm_scan(lstm, x, lengths, mine)
        return out, {f"{name}.{d}.{g}": v for (d, g), v in found.items()}

    def steps(
        self,
        x: torch.Tensor,
        premise: torch.Tensor,
        hypothesis: torch.Tensor,
        gates: bool = False,
        offsets: dict[str, torch.Tensor] | None = None,
        ops: relevance.Ops = relevance.PLAIN,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """x: B×T×K joint embeddings; premise B×n and hypothesis B×m: the joint positions of each sentence's tokens
        (-1 = padding). Yields (name, tensor) for STEPS, and each LSTM's gates right after it when `gates`.
        Per-token tensors are B×T×… on the joint positions; offsets are given the same way. ``ops``: the plain
        operations, or LRP's rules (:meth:`lrp_logits`)."""
        offsets = offsets or {}
        batch, width = x.shape[:2]
        n, m = premise.shape[1], hypothesis.shape[1]
        size = max(n, m)
        fill = lambda idx: nn.functional.pad(idx, (0, size - idx.shape[1]), value=-1)  # noqa: E731
        index = torch.cat([fill(premise), fill(hypothesis)])  # 2B×S: premise rows, then hypothesis rows
        real = index >= 0
        lengths = real.sum(1)
        rows = torch.arange(2 * batch, device=x.device).remainder(batch).unsqueeze(1).expand_as(index)

        def split(t: torch.Tensor) -> torch.Tensor:  # B×T×H joint -> 2B×S×H sentences (zeros at padding)
            gathered = torch.cat([t, t]).gather(1, index.clamp_min(0).unsqueeze(-1).expand(-1, -1, t.shape[-1]))
            return gathered * real.unsqueeze(-1)

        def join(s: torch.Tensor) -> torch.Tensor:  # 2B×S×H sentences -> B×T×H joint
            return s.new_zeros(batch, width, s.shape[-1]).index_put((rows[real], index[real]), s[real])

        def split_offsets(prefix: str) -> dict[str, torch.Tensor]:
            return {k: split(v) for k, v in offsets.items() if k.startswith(prefix + ".")}

        yield "embeddings", x
        encoded, found = self._lstm("input_lstm", self.dropout(split(x)), lengths, gates,
                                    split_offsets("input_lstm"), ops)
        yield "input_lstm", join(encoded)
        for name, value in found.items():
            yield name, join(value)
        u, v = encoded[:batch, :n], encoded[batch:, :m]
        pm, hm = premise >= 0, hypothesis >= 0
        energy = ops.matmul(u, v.transpose(1, 2))  # B×n×m
        yield "align.energy", energy
        lowest = torch.finfo(energy.dtype).min
        to_hypothesis = energy.masked_fill(~hm.unsqueeze(1), lowest).softmax(2) * pm.unsqueeze(2)
        to_premise = energy.masked_fill(~pm.unsqueeze(2), lowest).softmax(1) * hm.unsqueeze(1)
        yield "align", torch.stack([to_hypothesis, to_premise], 1)
        u_tilde = ops.matmul(to_hypothesis, v)  # B×n×2d
        v_tilde = ops.matmul(to_premise.transpose(1, 2), u)  # B×m×2d
        enhanced = torch.cat([fill_rows(torch.cat([a, b, a - b, ops.mul(a, b)], -1), size)
                              for a, b in ((u, u_tilde), (v, v_tilde))])  # 2B×S×8d
        projected = ops.act(torch.relu, ops.linear(self.projection(enhanced))) * real.unsqueeze(-1)
        yield "projection", join(projected)
        inferred, found = self._lstm("inference_lstm", self.dropout(projected), lengths, gates,
                                     split_offsets("inference_lstm"), ops)
        yield "inference_lstm", join(inferred)
        for name, value in found.items():
            yield name, join(value)
        avg = (inferred * real.unsqueeze(-1)).sum(1) / lengths.clamp_min(1).unsqueeze(1).to(inferred.dtype)
        top = masked_max(inferred, real)
        pool = torch.cat([avg[:batch], top[:batch], avg[batch:], top[batch:]], -1)
        yield "pool", pool
        yield "output", self.output(self.dropout(ops.act(torch.tanh, ops.linear(self.hidden(self.dropout(pool))))))

    def lrp_logits(self, x: torch.Tensor, premise: torch.Tensor, hypothesis: torch.Tensor, eps: float
                   ) -> torch.Tensor:
        """The logits under the LRP rules: the values of ``steps``, LRP's backward (module docstring)."""
        return dict(self.steps(x, premise, hypothesis, ops=relevance.Rules(eps)))["output"]


# ------------------------------------------------------------------------------------------------ the adapter
class ESIMAdapter(NativeAdapter):
    """An ESIM bundle (``"adapter": "esim"``; format in :mod:`worker.models.native`) with ``"model":
    {"embedding_dim": r, "hidden_size": d}`` and optionally ``"bos"``/``"eos"`` tokens around each sentence.

    Inputs are ``{"premise", "hypothesis"}``. Layers: ``embeddings``, ``input_lstm``, ``projection``,
    ``inference_lstm``, ``pool``, ``output``; attention: ``align`` (B×2×n×m: [0] = softmax over the hypothesis for
    each premise word, [1] = softmax over the premise for each hypothesis word) and ``align.energy`` (e, B×n×m, a
    live tensor of the graph: ∂S/∂e by autograd); gates: :data:`GATE_NAMES` (B×T×d, on the joint positions).
    """

    kind = "esim"
    offers = NativeAdapter.offers | {Capability.PAIR_ALIGNMENT, Capability.LSTM_GATES, Capability.LRP_RULES}

    def __init__(self, spec, revision: str):
        super().__init__(spec, revision)
        self.attention_names = list(ATTENTION)
        self.layer_names = [n for n in STEPS if n not in ATTENTION]
        self.gate_names = list(GATE_NAMES)
        self.mask_token_id = self.vocab.id("<unk>")

    def build(self) -> nn.Module:
        classes = len(self.labels) if self.labels is not None else len(LABELS)
        return ESIM(len(self.vocab), int(self.hyper["embedding_dim"]), int(self.hyper["hidden_size"]), classes)

    def step_names(self) -> list[str]:
        return list(STEPS)

    # ---------------------------------------------------------------- encode
    def item_layout(self, item: Any) -> list[tuple[str, bool, tuple[int, int], int]]:
        """(token, special, (start, end), segment): the premise's tokens (segment 0), then the hypothesis's (1)."""
        from worker.models.hf import HFAdapter

        premise, hypothesis = HFAdapter._normalise(item)
        if hypothesis is None:
            raise InputError(f"{self.name} is an NLI model: give a premise and a hypothesis, not a text")
        return self.pair_layout((premise, hypothesis))

    def pair_layout(self, pair: tuple[str, str]) -> list[tuple[str, bool, tuple[int, int], int]]:
        """The tokens of a (premise, hypothesis) pair (:meth:`item_layout`)."""
        lower = self.hyper.get("lowercase", True)
        bos, eos = self.hyper.get("bos"), self.hyper.get("eos")
        rows = []
        for segment, text in enumerate(pair):
            words = [(t if lower else text[a:b], False, (a, b), segment) for t, a, b in tokenize(text)]
            if not words:
                raise InputError(f"the {('premise', 'hypothesis')[segment]} has no words once tokenised")
            rows += ([(bos, True, (0, 0), segment)] if bos else []) + words \
                + ([(eos, True, (0, 0), segment)] if eos else [])
        return rows

    def inputs(self, encoding: Encoding) -> dict[str, torch.Tensor]:
        return sentence_positions(encoding.segments, self.device)

    @property
    def gate_size(self) -> int:
        """d: the hidden size of both LSTMs, the size of each gate signal (the ``lstm_gates`` capability)."""
        return int(self.hyper["hidden_size"])

    def sentence_tokens(self, encoding: Encoding, i: int = 0) -> tuple[list[int], list[int]]:
        """The joint token indices of item i's premise and hypothesis (the rows and columns of ``align``)."""
        segments = encoding.segments[i]
        return ([t for t, s in enumerate(segments) if s == 0], [t for t, s in enumerate(segments) if s == 1])

    # ---------------------------------------------------------------- run
    def lrp_relevance(self, x: torch.Tensor, mask: torch.Tensor, target: ScoreTarget, epsilon: float,
                      encoding: Encoding | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``lrp_rules`` capability (module docstring, LRP)."""
        if encoding is None:
            raise InputError("ESIM's relevance needs the encoding (which tokens are the premise's)")
        places = self.inputs(encoding)
        module = self.module
        return relevance.input_relevance(
            x, lambda e: module.lrp_logits(e, places["premise"], places["hypothesis"], epsilon), target, epsilon)

    def forward(
        self,
        x: torch.Tensor,
        encoding: Encoding,
        capture: Iterable[str] = (),
        upto: str | None = None,
        gate_offsets: dict[str, torch.Tensor] | None = None,
    ) -> Trace:
        """x: B×T×K. ``logits`` (B×3, when run to ``output``) and the captured layers, attention and gates.
        ``gate_offsets``: {gate name: B×T×d} added to those gates (module docstring)."""
        capture = list(dict.fromkeys(capture))
        gates = [n for n in capture if n in GATE_NAMES]
        unknown = [n for n in gate_offsets or {} if n not in GATE_NAMES]
        if unknown:
            raise InputError(f"unknown gate name(s) {unknown}; this model has {list(GATE_NAMES)}")
        stop = self._stop([n for n in capture if n not in GATE_NAMES], upto)
        deepest = max([STEPS.index(n.split(".")[0]) for n in [*gates, *(gate_offsets or {})]], default=0)
        if deepest > STEPS.index(stop):
            raise InputError(f"gates of an LSTM beyond upto={upto!r}")
        trace = Trace(logits=None)
        for name, value in self.module.steps(x, **self.inputs(encoding), gates=bool(gates), offsets=gate_offsets):
            if name == "output" and self.labels is not None:
                trace.logits = value
            if name in capture:
                target = trace.gates if name in GATE_NAMES else \
                    trace.attention if name in ATTENTION else trace.layers
                target[name] = value
            if name == stop:
                break
        return trace


# ------------------------------------------------------------------------------------------------ bundles
def write_bundle(out_dir, state: dict[str, torch.Tensor], tokens: Iterable[str], config: dict[str, Any]) -> None:
    """Write an ESIM bundle: ``vocab.txt``, ``model.safetensors`` (the embedding table as float16) and
    ``config.json`` (`config` completed with the format keys)."""
    import json
    import os
    from pathlib import Path

    from safetensors.torch import save_file

    from worker.models.words import Vocabulary

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    Vocabulary(tuple(tokens)).write(out / "vocab.txt")
    state = {k: v.detach().float().contiguous() for k, v in state.items()}
    state["embeddings.weight"] = state["embeddings.weight"].half()
    save_file(state, str(out / "model.safetensors.tmp"), metadata={"format": "pt"})
    os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
    full = {"lantern": 1, "adapter": "esim", "labels": list(LABELS), "vocab": "vocab.txt",
            "weights": "model.safetensors", "max_tokens": 256, **config}
    (out / "config.json.tmp").write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(out / "config.json.tmp", out / "config.json")


# the state-dict keys of the common public PyTorch ESIM (``_word_embedding``, ``_encoding._encoder``,
# ``_projection.0``, ``_composition._encoder``, ``_classification.1`` / ``.4``) -> this module's
PUBLIC_LAYOUT = {
    "_word_embedding.": "embeddings.",
    "_encoding._encoder.": "input_lstm.",
    "_projection.0.": "projection.",
    "_composition._encoder.": "inference_lstm.",
    "_classification.1.": "hidden.",
    "_classification.4.": "output.",
}


def from_public_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A public-layout ESIM state dict (or a training checkpoint holding one under ``"model"``) renamed to this
    module's keys; InputError names what does not fit."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    out = {}
    for key, value in state.items():
        prefix = next((p for p in PUBLIC_LAYOUT if key.startswith(p)), None)
        if prefix is None:
            raise InputError(f"unexpected key {key!r}: not the public ESIM layout ({', '.join(PUBLIC_LAYOUT)})")
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{key!r} is not a tensor")
        out[PUBLIC_LAYOUT[prefix] + key[len(prefix):]] = value
    vocab_size, embedding_dim = out["embeddings.weight"].shape if "embeddings.weight" in out else (0, 0)
    hidden = out["projection.weight"].shape[0] if "projection.weight" in out else 0
    classes = out["output.weight"].shape[0] if "output.weight" in out else 0
    expected = {k: tuple(v.shape) for k, v in ESIM(max(vocab_size, 1), max(embedding_dim, 1), max(hidden, 1),
                                                    max(classes, 1)).state_dict().items()}
    wrong = sorted(k for k in expected.keys() | out.keys() if expected.get(k) != tuple(out[k].shape if k in out
                                                                                        else ()))
    if wrong:
        raise InputError("the checkpoint does not fit an ESIM: " + ", ".join(
            f"{k}: expected {expected.get(k)}, found {tuple(out[k].shape) if k in out else None}" for k in wrong[:5]))
    return out


def import_checkpoint(checkpoint, vocab_file, out_dir, name: str, labels: list[str] | None = None,
                      bos: str | None = None, eos: str | None = None, lowercase: bool = True) -> dict[str, Any]:
    """``lantern models import-esim``: a trusted external checkpoint (``torch.load(weights_only=True)``: tensors and
    plain containers only) + its vocabulary (one word per line, line = id) -> an ESIM bundle in `out_dir`."""
    from pathlib import Path

    raw = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise InputError("the checkpoint must hold a state dict (or a dict with one under 'model')")
    state = from_public_layout(raw)
    words = Path(vocab_file).read_text(encoding="utf-8").splitlines()
    vocab_size, embedding_dim = state["embeddings.weight"].shape
    if len(words) != vocab_size:
        raise InputError(f"the vocabulary has {len(words)} words; the embedding table has {vocab_size} rows")
    labels = list(labels or LABELS)
    if len(labels) != state["output.weight"].shape[0]:
        raise InputError(f"{len(labels)} labels for an output layer of {state['output.weight'].shape[0]}")
    # this vocabulary format starts with <pad>, <unk>: the checkpoint's first two rows play those parts
    tokens = ["<pad>", "<unk>", *words[2:]]
    if len(set(tokens)) != len(tokens):
        raise InputError("the vocabulary's words must be distinct")
    hyper = {"embedding_dim": int(embedding_dim), "hidden_size": int(state["projection.weight"].shape[0]),
             "lowercase": lowercase, **({"bos": bos} if bos else {}), **({"eos": eos} if eos else {})}
    write_bundle(out_dir, state, tokens, {
        "name": name, "labels": labels, "model": hyper,
        "description": f"ESIM imported from {Path(checkpoint).name}",
        "source": f"lantern models import-esim {Path(checkpoint).name} (public ESIM layout)",
    })
    return {"name": name, "vocab_size": int(vocab_size), **hyper}
