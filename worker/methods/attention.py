"""`attention`: the model's own attention weights after softmax (DESIGN §5). One method, one view per kind of model:
:data:`VIEWS` pairs a test on the adapter with the function that reads that kind's attention.

- ESIM (Ghaeini et al. 2018 §3.1): the soft alignment in both directions, premise × hypothesis:
  ``premise_to_hypothesis[i][j]`` = softmax over j of e_ij (what premise word i reads from the hypothesis; rows sum
  to 1) and ``hypothesis_to_premise[i][j]`` = softmax over i of e_ij (columns sum to 1).
  JSON: ``{"view": "esim", "shape": [n, m], "premise", "hypothesis", "premise_tokens", "hypothesis_tokens",
  "premise_to_hypothesis": n×m, "hypothesis_to_premise": n×m, "energy": n×m}``; tensors ``attention`` (2×n×m),
  ``energy`` (n×m); figure: the two maps side by side.
- Transformers (Hugging Face encoders, the Transformer classifier; :mod:`worker.methods.attention_maps`): every
  layer's and head's self-attention (rows = queries, columns = keys) and the head average per layer.
  JSON: ``{"view": "transformer", "layers": ["attention.1", …], "heads": H, "shape": [L, H, T, T],
  "head_average": L×T×T, "figure_layer"}``; tensors ``attention`` (L×H×T×T), ``head_average`` (L×T×T); figures: the
  head averages of all layers (``attention.png``) and every head of ``figure_layer`` (``attention-heads.png``),
  specials hidden unless ``show_special``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.methods.attention_maps import has_self_attention, transformer_view
from worker.methods.base import Method, MethodResult, Params, Target
from worker.models.base import Adapter, Encoding, InputError
from worker.models.esim import is_esim


class Params(Params):
    figure_layer = ma.fields.String(load_default=None, allow_none=True,
                                    metadata={"description": "transformers: the layer whose heads are drawn "
                                                             "(default: the last)"})
    show_special = ma.fields.Boolean(load_default=False,
                                     metadata={"description": "transformers: draw [CLS]/[SEP] rows and columns"})


def esim_view(adapter: Adapter, encoding: Encoding, target: Target | None, params: dict[str, Any]) -> MethodResult:
    from worker.methods.attention_saliency import words_of

    one = encoding.item(0)
    with torch.no_grad():
        trace = adapter.forward(adapter.embed(one), one, capture=["align", "align.energy"])
    attention, energy = trace.attention["align"][0].cpu(), trace.attention["align.energy"][0].cpu()
    premise, hypothesis, p_words, h_words = words_of(adapter, one)

    def figure() -> bytes:
        from worker.render.nli import alignment_png

        return alignment_png([("premise → hypothesis (rows sum to 1)", attention[0].numpy()),
                              ("hypothesis → premise (columns sum to 1)", attention[1].numpy())],
                             p_words, h_words, f"attention — {adapter.name}")

    return MethodResult(
        tensors={"attention": attention.contiguous(), "energy": energy.contiguous()},
        json={"view": "esim", "shape": list(energy.shape), "premise": p_words, "hypothesis": h_words,
              "premise_tokens": premise, "hypothesis_tokens": hypothesis,
              "premise_to_hypothesis": attention[0].tolist(), "hypothesis_to_premise": attention[1].tolist(),
              "energy": energy.tolist()},
        figures={"": figure},
    )


# (applies to this adapter?, view): the first that applies runs
VIEWS: list[tuple[Callable[[Adapter], bool], Callable[..., MethodResult]]] = [
    (is_esim, esim_view), (has_self_attention, transformer_view)]


def applies(adapter: Adapter) -> bool:
    return any(test(adapter) for test, _ in VIEWS)


def run(adapter: Adapter, encoding: Encoding, target: Target | None, params: dict[str, Any], layers=None,
        progress: Callable[[float], None] = lambda fraction: None, seed: int = 0) -> MethodResult:
    for test, view in VIEWS:
        if test(adapter):
            progress(0.0)
            return view(adapter, encoding, target, params)
    raise InputError(f"attention has no view for {adapter.name}")


METHOD = Method(
    name="attention",
    summary="The model's attention weights after softmax (ESIM: the premise × hypothesis alignment, both "
            "directions; transformers: per layer and head, and the head average).",
    params=Params,
    run=run,
    needs_head=False,
    token_scores=False,
    tensors=("attention", "energy", "head_average"),
    applies=applies,
)
