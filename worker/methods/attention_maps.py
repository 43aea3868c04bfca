"""Self-attention of the adapters that declare ``self_attention`` (Hugging Face encoders, the Transformer classifier):
the `attention` method's transformer view and what `attention_rollout` builds on. Not a method itself (no ``METHOD``).

Such an adapter's ``attention_names`` are ``attention.1`` … ``attention.N``, each captured as B×heads×T×T weights
after softmax (rows = queries, columns = keys; each row sums to 1 over the real tokens).
"""
from __future__ import annotations

from typing import Any

import torch

from worker.methods.base import MethodResult, Target
from worker.models.base import Adapter, Encoding, InputError


def self_attention(adapter: Adapter, encoding: Encoding) -> torch.Tensor:
    """L×heads×T×T attention weights of item 0 (layers in forward order), one forward pass, on the CPU."""
    one = encoding.item(0)
    names = adapter.attention_names
    with torch.no_grad():
        trace = adapter.forward(adapter.embed(one), one, capture=names)
    return torch.stack([trace.attention[n][0].float().cpu() for n in names])


def visible(encoding: Encoding, show_special: bool) -> list[int]:
    """Token positions a figure shows (specials hidden unless asked, or unless nothing else is left)."""
    keep = [t for t, s in enumerate(encoding.special[0]) if show_special or not s]
    return keep or list(range(len(encoding.special[0])))


def transformer_view(adapter: Adapter, encoding: Encoding, target: Target | None, params: dict[str, Any]
                     ) -> MethodResult:
    """Per layer and head, plus the head average (module docstring of `attention`)."""
    one = encoding.item(0)
    weights = self_attention(adapter, one)  # L×H×T×T
    average = weights.mean(1)  # L×T×T
    names = list(adapter.attention_names)
    layer = params.get("figure_layer") or names[-1]
    if layer not in names:
        raise InputError(f"figure_layer {layer!r} is not one of {names}")
    tokens = one.tokens[0]
    keep = visible(one, params.get("show_special", False))
    labels = [tokens[t] for t in keep]
    part = (slice(None), slice(None)) if len(keep) == len(tokens) else (keep, keep)

    def crop(m: torch.Tensor) -> torch.Tensor:
        return m[part[0]][:, part[1]]

    hidden = "" if len(keep) == len(tokens) else " (specials hidden)"

    def averages_png() -> bytes:
        from worker.render.maps import heatmaps_png

        return heatmaps_png([(f"{n} (head average)", crop(average[i]).numpy()) for i, n in enumerate(names)],
                            labels, labels, f"attention — {adapter.name}", f"rows: queries, columns: keys{hidden}",
                            colour_label="weight")

    def heads_png() -> bytes:
        from worker.render.maps import heatmaps_png

        k = names.index(layer)
        return heatmaps_png([(f"{layer} head {h + 1}", crop(weights[k, h]).numpy())
                             for h in range(weights.shape[1])], labels, labels,
                            f"attention heads of {layer} — {adapter.name}", f"rows: queries, columns: keys{hidden}",
                            columns=4, colour_label="weight")

    return MethodResult(
        tensors={"attention": weights.contiguous(), "head_average": average.contiguous()},
        json={"view": "transformer", "layers": names, "heads": int(weights.shape[1]), "shape": list(weights.shape),
              "head_average": average.tolist(), "figure_layer": layer},
        figures={"": averages_png, "heads": heads_png},
    )


def rollout(weights: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): weights L×H×T×T -> T×T, R = Â_L ⋯ Â_1 with
    Â_l = residual·I + (1 − residual)·mean_heads(A_l), rows renormalised to sum to 1."""
    T = weights.shape[-1]
    eye = torch.eye(T, dtype=torch.float64)
    out = eye
    for layer in weights.double():
        a = residual * eye + (1 - residual) * layer.mean(0)
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out
