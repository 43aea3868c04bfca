"""`attention`: the model's own attention weights after softmax. One method, one view per kind of attention:
:data:`VIEWS` maps each capability of the method's requirement (``requires_one_of``: pair_alignment, next_word,
self_attention, in that order of preference) to the function that reads that kind of attention, and the first
capability the adapter offers picks the view. A new model family with one of these kinds of attention needs no
change here; it declares the capability.

- ``pair_alignment`` (ESIM; Ghaeini et al. 2018 §3.1): the soft alignment in both directions, premise × hypothesis:
  ``premise_to_hypothesis[i][j]`` = softmax over j of e_ij (what premise word i reads from the hypothesis; rows sum
  to 1) and ``hypothesis_to_premise[i][j]`` = softmax over i of e_ij (columns sum to 1).
  JSON: ``{"view": "esim", "shape": [n, m], "premise", "hypothesis", "premise_tokens", "hypothesis_tokens",
  "premise_to_hypothesis": n×m, "hypothesis_to_premise": n×m, "energy": n×m}``; tensors ``attention`` (2×n×m),
  ``energy`` (n×m); figure: the two maps side by side.
- ``self_attention`` (Hugging Face encoders, the Transformer classifier; :mod:`worker.methods.attention_maps`): every
  layer's and head's self-attention (rows = queries, columns = keys) and the head average per layer.
  JSON: ``{"view": "transformer", "layers": ["attention.1", …], "heads": H, "shape": [L, H, T, T],
  "head_average": L×T×T, "figure_layer"}``; tensors ``attention`` (L×H×T×T), ``head_average`` (L×T×T); figures: the
  head averages of all layers (``attention.png``) and every head of ``figure_layer`` (``attention-heads.png``),
  specials hidden unless ``show_special``.
- ``next_word`` (the LSTM language model, :mod:`worker.models.lstm_lm`; the blog's textgenrnn heat maps): the attention over the
  history at each step. With ``generate`` = n > 0 the text is first extended greedily by up to n words
  (deterministic; ``MAX_GENERATE`` and the model's ``max_tokens`` cap it; it stops after ``</s>``); the sequence
  is then ``<s>``, the text's words, and the generated words but the last (which no step reads). Row t is the
  step at position t: it reads tokens 0..t and predicts the word after token t.
  JSON: ``{"view": "lm", "shape": [T, T], "tokens": the history (T), "special": [bool] (T), "text_tokens": how many
  tokens come from the text (the rest were generated), "generated": the generated words (n or fewer),
  "predicted": per step the greedy word (argmax of the logits, ``<pad>``/``<unk>``/``<s>`` excluded; for a
  generated step, the word generated there), "next": per step the token that follows in the sequence (the last
  step: the last generated word, or null without generation), "generated_steps": [bool] (T: the step predicted a
  generated word), "history": T×T (row t: weights over positions 0..t, zeros beyond t; rows sum to 1)}``;
  tensor ``attention`` (T×T); figure: rows = steps labelled by the word predicted there (``→ word`` for a
  generated one), columns = the history words, lighter = more attention.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.capabilities import Capability
from worker.methods.attention_maps import transformer_view
from worker.methods.attention_saliency import words_of
from worker.methods.base import Method, MethodResult, Params, Target
from worker.models.base import Adapter, Encoding, InputError
from worker.models.protocols import NextWord, offering

MAX_GENERATE = 50  # words the language-model view may generate


class AttentionParams(Params):
    figure_layer = ma.fields.String(load_default=None, allow_none=True,
                                    metadata={"description": "transformers: the layer whose heads are drawn "
                                                             "(default: the last)"})
    show_special = ma.fields.Boolean(load_default=False,
                                     metadata={"description": "transformers: draw [CLS]/[SEP] rows and columns"})
    generate = ma.fields.Integer(load_default=0, strict=True, validate=ma.validate.Range(0, MAX_GENERATE),
                                 metadata={"description": "language models: greedily generate this many words "
                                                          "after the text first (0 = explain the text as given)"})


def alignment_view(adapter: Adapter, encoding: Encoding, target: Target | None, params: dict[str, Any]
                   ) -> MethodResult:
    one = encoding.item(0)
    with torch.no_grad():
        trace = adapter.forward(adapter.embed(one), one, capture=["align", "align.energy"])
    attention, energy = trace.attention["align"][0].cpu(), trace.attention["align.energy"][0].cpu()
    premise, hypothesis, p_words, h_words = words_of(adapter, one, "attention")

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


def history_view(adapter: Adapter, encoding: Encoding, target: Target | None, params: dict[str, Any]
                 ) -> MethodResult:
    lm = offering(adapter, Capability.NEXT_WORD, NextWord, "attention")
    one = encoding.item(0)
    generated = lm.generate(one, params.get("generate") or 0)
    seq = lm.extend(one, generated[:-1])
    with torch.no_grad():
        trace = adapter.forward(adapter.embed(seq), seq, capture=["history", "output"])
    history = trace.attention["history"][0, 0].float().cpu()  # T×T
    chosen = lm.allowed(trace.layers["output"][0]).argmax(-1).tolist()
    vocabulary = adapter.head_labels()  # a language model's labels are its vocabulary
    predicted = [vocabulary[i] for i in chosen]
    tokens, n_text = seq.tokens[0], len(one.tokens[0])
    following = [*tokens[1:], generated[-1] if generated else None]
    steps = [t >= n_text - 1 and bool(generated) for t in range(len(tokens))]

    def figure() -> bytes:
        from worker.render.maps import heatmaps_png

        rows = [f"→ {w}" if gen else w for w, gen in zip(predicted, steps, strict=True)]
        text = " ".join(t for t, special in zip(one.tokens[0], one.special[0], strict=True) if not special)
        more = " " + " ".join(w for w in generated if w != lm.end_of_text) if generated else ""
        return heatmaps_png([("attention over the history", history.numpy())], rows, tokens,
                            f"attention — {adapter.name}",
                            subtitle=f"{text}{' ⟶' + more if generated else ''}\nrows: the word predicted at each step"
                                     f"{' (→ generated, greedy)' if generated else ''}; columns: the history; "
                                     "lighter = more attention",
                            columns=1, colour_label="attention weight", cmap="magma")

    return MethodResult(
        tensors={"attention": history.contiguous()},
        json={"view": "lm", "shape": list(history.shape), "tokens": tokens, "special": seq.special[0],
              "text_tokens": n_text, "generated": generated, "predicted": predicted, "next": following,
              "generated_steps": steps, "history": history.tolist()},
        figures={"": figure},
    )


View = Callable[[Adapter, Encoding, Target | None, dict[str, Any]], MethodResult]

# the capability an adapter declares -> the view that reads its kind of attention
VIEWS: dict[Capability, View] = {
    Capability.PAIR_ALIGNMENT: alignment_view,
    Capability.NEXT_WORD: history_view,
    Capability.SELF_ATTENTION: transformer_view,
}


def view_for(adapter: Adapter) -> View | None:
    """The view of the first capability of the method's requirement that the adapter offers (None: it offers none)."""
    offered = adapter.capabilities
    return next((VIEWS[c] for c in METHOD.requires.any_of if c in offered), None)


def check(adapter: Adapter, params: dict[str, Any]) -> None:
    """What the API checks at submit too: figure_layer names one of the transformer's attention layers (the other
    views draw no per-layer figure and ignore it)."""
    layer = params.get("figure_layer")
    if layer is not None and view_for(adapter) is transformer_view and layer not in adapter.attention_names:
        raise InputError(f"figure_layer {layer!r} is not one of {list(adapter.attention_names)}")


def run(adapter: Adapter, encoding: Encoding, target: Target | None, params: dict[str, Any], layers=None,
        progress: Callable[[float], None] = lambda fraction: None, seed: int = 0) -> MethodResult:
    view = view_for(adapter)
    if view is None:
        raise InputError(f"attention has no view for {adapter.name}")
    progress(0.0)
    return view(adapter, encoding, target, params)


METHOD = Method(
    name="attention",
    summary="The model's attention weights after softmax (ESIM: the premise × hypothesis alignment, both "
            "directions; transformers: per layer and head, and the head average; LSTM language model: the weights "
            "over the history at each step, optionally after greedy generation).",
    params=AttentionParams,
    run=run,
    token_scores=False,
    tensors=("attention", "energy", "head_average"),
    check=check,
)
