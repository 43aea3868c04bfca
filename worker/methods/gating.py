"""`gating`: ESIM's LSTM gating signals and their saliency (Ghaeini et al. 2018 §3.2).

For each LSTM (``input_lstm``, ``inference_lstm``), direction (``fwd``, ``bwd``) and gate (``input``, ``forget``,
``output``, and the memory ``cell``), at each word t: the signal norm ‖g_t‖₂ over the hidden units, and the saliency
norm ‖∂S(y)/∂g_t‖₂. The gates come from the adapter's hand-written cell; their saliency is the gradient with respect
to an offset added to each gate inside the recurrence (zero, so the output is unchanged), one backward pass for all.

Normalisation (the paper's Fig. 3): each curve — one LSTM, direction, gate, kind and sentence — is
divided by its maximum over that sentence's words. The raw norms are kept too.

JSON: ``{"premise": [words], "hypothesis": [words], "premise_tokens", "hypothesis_tokens", "gates": {"<lstm>.<dir>.
<gate>": {"signal": [T], "saliency": [T], "signal_normalised": [T], "saliency_normalised": [T]}}}`` (T = all tokens,
premise then hypothesis). Tensors: ``<gate name>.signal`` and ``<gate name>.saliency`` (T×d each).
Figures: one per LSTM (``gating-input_lstm.png``, ``gating-inference_lstm.png``): a row per gate, the signal and the
saliency curves over the premise and the hypothesis.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.capabilities import Capability
from worker.methods.attention_saliency import words_of
from worker.methods.base import Method, MethodResult, Params, Target
from worker.models.base import Adapter, Encoding
from worker.models.esim import DIRECTIONS, GATES, LSTMS
from worker.models.protocols import LSTMGates, offering


class GatingParams(Params):
    lstms = ma.fields.List(ma.fields.String(validate=ma.validate.OneOf(LSTMS)), load_default=list(LSTMS),
                           validate=ma.validate.Length(min=1))
    directions = ma.fields.List(ma.fields.String(validate=ma.validate.OneOf(DIRECTIONS)),
                                load_default=list(DIRECTIONS), validate=ma.validate.Length(min=1))
    gates = ma.fields.List(ma.fields.String(validate=ma.validate.OneOf(GATES)), load_default=list(GATES),
                           validate=ma.validate.Length(min=1))
    figure_gates = ma.fields.List(ma.fields.String(validate=ma.validate.OneOf(GATES)),
                                  load_default=["input", "forget", "output"],
                                  metadata={"description": "gates drawn in the figures (the paper's three)"})


def gate_saliency(adapter: Adapter, encoding: Encoding, target: Target,
                  names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(gate values, ∂S/∂gate) for gate `names`, each B×T×d, one backward pass (items are independent)."""
    gated = offering(adapter, Capability.LSTM_GATES, LSTMGates, "gating")
    x = adapter.embed(encoding)
    offsets = {n: x.new_zeros(x.shape[0], x.shape[1], gated.gate_size, requires_grad=True) for n in names}
    with torch.enable_grad():
        trace = gated.forward(x, encoding, capture=names, gate_offsets=offsets)
        grads = torch.autograd.grad(target(trace.logits).sum(), [offsets[n] for n in names])
    return ({n: trace.gates[n].detach() for n in names}, dict(zip(names, grads, strict=True)))


def normalised(values: torch.Tensor, sentences: list[list[int]]) -> torch.Tensor:
    """values (T) divided, per sentence, by their maximum over that sentence's tokens."""
    out = values.clone()
    for places in sentences:
        top = values[places].max()
        out[places] = values[places] / top if top > 0 else values[places]
    return out


def run(adapter: Adapter, encoding: Encoding, target: Target, params: dict[str, Any], layers=None,
        progress: Callable[[float], None] = lambda fraction: None, seed: int = 0) -> MethodResult:
    progress(0.0)
    one = encoding.item(0)
    names = [f"{lstm}.{d}.{g}" for lstm in params["lstms"] for d in params["directions"] for g in params["gates"]]
    values, grads = gate_saliency(adapter, one, target, names)
    premise, hypothesis, p_words, h_words = words_of(adapter, one, "gating")
    sentences = [premise, hypothesis]
    gates, tensors = {}, {}
    for name in names:
        signal, saliency = values[name][0].cpu(), grads[name][0].cpu()
        tensors[f"{name}.signal"], tensors[f"{name}.saliency"] = signal.contiguous(), saliency.contiguous()
        norms = {"signal": signal.norm(dim=-1), "saliency": saliency.norm(dim=-1)}
        gates[name] = {**{k: v.tolist() for k, v in norms.items()},
                       **{f"{k}_normalised": normalised(v, sentences).tolist() for k, v in norms.items()}}
    progress(1.0)
    label = adapter.head_labels()[int(target.index[0])]

    def figure(lstm: str) -> Callable[[], bytes]:
        def draw() -> bytes:
            from worker.render.nli import gates_png

            curves = {g: {d: {k: {"premise": [gates[f"{lstm}.{d}.{g}"][f"{k}_normalised"][t] for t in premise],
                                  "hypothesis": [gates[f"{lstm}.{d}.{g}"][f"{k}_normalised"][t]
                                                 for t in hypothesis]}
                              for k in ("signal", "saliency")}
                          for d in params["directions"]}
                      for g in params["figure_gates"] if g in params["gates"]}
            return gates_png(curves, p_words, h_words, f"{lstm} gates — {adapter.name}",
                             f"norms ÷ curve max; target: {label} ({target.score})")
        return draw

    return MethodResult(
        tensors=tensors,
        json={"premise": p_words, "hypothesis": h_words, "premise_tokens": premise, "hypothesis_tokens": hypothesis,
              "gates": gates, "label": label},
        figures={lstm: figure(lstm) for lstm in params["lstms"]},
    )


METHOD = Method(
    name="gating",
    summary="ESIM LSTM gating signals and their saliency ∂S(y)/∂gate: L2 norms per word, per LSTM, direction and "
            "gate (Ghaeini et al. 2018).",
    params=GatingParams,
    run=run,
    token_scores=False,
    tensors=("<lstm>.<direction>.<gate>.signal", "<lstm>.<direction>.<gate>.saliency"),
)
