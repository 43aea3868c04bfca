"""ESIM explanations for a batch of pairs: attention saliency (one backward pass through e_ij) and gating (the
hand-written LSTM cell with gate offsets, one backward pass), seconds per pair, against the plain ESIM forward
(packed nn.LSTM, no gradient) as the floor."""
from __future__ import annotations

import torch

from benchmarks import Row, timed


def run(quick: bool = False) -> list[Row]:
    from worker.methods.attention_saliency import energy_saliency
    from worker.methods.base import Target
    from worker.methods.gating import gate_saliency
    from worker.models import load_model
    from worker.models.esim import GATE_NAMES
    from worker.zoo.esim import heldout_pairs

    n = 16 if quick else 64
    pairs = heldout_pairs(n)
    rows = []
    for name in ("esim-50", "esim-300"):
        adapter = load_model(name, device="cpu").load()
        enc = adapter.encode([{"premise": p.premise, "hypothesis": p.hypothesis} for p in pairs])

        def forward(adapter=adapter, enc=enc):
            with torch.no_grad():
                return adapter.forward(adapter.embed(enc), enc).logits

        target = Target(forward().argmax(-1))
        floor = timed(forward) / n
        saliency = timed(lambda a=adapter, e=enc, t=target: energy_saliency(a, e, t)) / n
        gating = timed(lambda a=adapter, e=enc, t=target: gate_saliency(a, e, t, list(GATE_NAMES))) / n
        both = saliency + gating
        for what, value in (("attention saliency", saliency), ("gating (16 gates)", gating),
                            ("attention saliency + gating", both)):
            rows.append(Row(f"{name}: {what}, batch of {n} pairs", "s/pair", value, floor, "plain forward",
                            higher_is_better=False, note="ratio = forward time / explanation time"))
    return rows
