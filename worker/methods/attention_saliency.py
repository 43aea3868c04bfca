"""`attention_saliency`: the saliency of ESIM's soft-alignment energies (Ghaeini et al. 2018 §3.1.1).

The energy e_ij = û_i · v̂_j between premise word i and hypothesis word j is a variable of the decision score S(y)
(the target's logit by default); its saliency is |∂S(y)/∂e_ij|, one forward and one backward pass. The
target is the predicted label, or the label the request names (``"target": "neutral"``).

JSON: ``{"shape": [n, m], "tensors": [...], "premise": [n words], "hypothesis": [m words], "premise_tokens": [n
token indices], "hypothesis_tokens": [m], "saliency": n×m, "attention": {"premise_to_hypothesis": n×m,
"hypothesis_to_premise": n×m}, "top": [{"premise", "hypothesis", "saliency"}, … 5 largest]}``.
Tensors: ``saliency`` (n×m, |∂S/∂e|), ``gradient`` (n×m, signed ∂S/∂e), ``energy`` (n×m), ``attention`` (2×n×m).
Figure: the saliency heat map beside the two attention maps (premise rows × hypothesis columns); with
``compare_with``, one panel per model (:func:`compare`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from worker.capabilities import Capability
from worker.methods.base import Method, MethodResult, Params, Target
from worker.models.base import Adapter, Encoding
from worker.models.protocols import PairAlignment, offering

TOP = 5


class AttentionSaliencyParams(Params):
    """No parameters: the target and score of the request decide S(y)."""


def energy_saliency(adapter: Adapter, encoding: Encoding, target: Target) -> dict[str, torch.Tensor]:
    """For a batch: ``gradient`` ∂S(y)/∂e (B×n×m), ``energy`` e and ``attention`` (B×2×n×m), one backward pass.
    Items are independent, so the gradient of the summed scores is each item's own."""
    x = adapter.embed(encoding).requires_grad_(True)  # the weights are frozen: x makes e part of a graph
    with torch.enable_grad():
        trace = adapter.forward(x, encoding, capture=["align.energy", "align"])
        energy = trace.attention["align.energy"]
        (gradient,) = torch.autograd.grad(target(trace.logits).sum(), energy)
    return {"gradient": gradient, "energy": energy.detach(), "attention": trace.attention["align"].detach()}


def words_of(adapter: Adapter, encoding: Encoding, method: str) -> tuple[list[int], list[int], list[str], list[str]]:
    """Item 0's premise and hypothesis token indices and their word strings (a ``pair_alignment`` adapter)."""
    pair = offering(adapter, Capability.PAIR_ALIGNMENT, PairAlignment, method)
    premise, hypothesis = pair.sentence_tokens(encoding, 0)
    words = encoding.word_strings(0)  # one word per token for ESIM
    return premise, hypothesis, [words[t] for t in premise], [words[t] for t in hypothesis]


def run(adapter: Adapter, encoding: Encoding, target: Target, params: dict[str, Any], layers=None,
        progress: Callable[[float], None] = lambda fraction: None, seed: int = 0) -> MethodResult:
    progress(0.0)
    one = encoding.item(0)
    premise, hypothesis, p_words, h_words = words_of(adapter, one, "attention_saliency")
    out = {k: v[0].cpu() for k, v in energy_saliency(adapter, one, target).items()}
    saliency = out["gradient"].abs()
    order = saliency.flatten().argsort(descending=True)[:TOP].tolist()
    m = saliency.shape[1]
    label = adapter.head_labels()[int(target.index[0])]
    part = {
        "shape": list(saliency.shape), "tensors": ["saliency", "gradient", "energy", "attention"],
        "premise": p_words, "hypothesis": h_words, "premise_tokens": premise, "hypothesis_tokens": hypothesis,
        "saliency": saliency.tolist(),
        "attention": {"premise_to_hypothesis": out["attention"][0].tolist(),
                      "hypothesis_to_premise": out["attention"][1].tolist()},
        "top": [{"premise": k // m, "hypothesis": k % m, "saliency": float(saliency.flatten()[k])} for k in order],
        "label": label,
    }
    progress(1.0)

    def figure() -> bytes:
        from worker.render.nli import alignment_png

        return alignment_png([("saliency |∂S/∂e|", saliency.numpy()),
                              ("attention premise → hypothesis", out["attention"][0].numpy()),
                              ("attention hypothesis → premise", out["attention"][1].numpy())],
                             p_words, h_words, f"attention saliency — {adapter.name}",
                             f"target: {label} ({target.score})")

    return MethodResult(
        tensors={"saliency": saliency.contiguous(), **{k: v.contiguous() for k, v in out.items()}},
        json=part, figures={"": figure},
    )


def compare(parts: Mapping[str, dict[str, Any]]) -> bytes:
    """The side-by-side figure of a `compare_with` job: one saliency panel per model (Ghaeini Fig. 2)."""
    from worker.render.nli import alignment_png

    names = list(parts)
    return alignment_png([(f"{name}: {parts[name]['label']}", parts[name]["saliency"]) for name in names],
                         [], [parts[name]["hypothesis"] for name in names], "attention saliency by model",
                         premises=[parts[name]["premise"] for name in names])


METHOD = Method(
    name="attention_saliency",
    summary="ESIM attention saliency |∂S(y)/∂e_ij| over the premise × hypothesis alignment energies "
            "(Ghaeini et al. 2018).",
    params=AttentionSaliencyParams,
    run=run,
    token_scores=False,
    tensors=("saliency", "gradient", "energy", "attention"),
    compare=compare,
)
