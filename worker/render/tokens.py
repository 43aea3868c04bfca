"""Token-score figure: words along the x axis, a bar per word and a heat strip under it.

Word score = sum of its tokens' scores (as ``word_scores``); specials ([CLS], [SEP], …) are hidden unless asked for.
Values are drawn as they are (no rescaling of the bars); the strip's colours are normalised to the largest |score|.
Long inputs wrap onto several rows so every word stays readable.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from worker.render.style import DIVERGING, INK, MUTED, SEQUENTIAL, figure_png, style

WORDS_PER_ROW = 28


def _label(word: str, limit: int = 18) -> str:
    word = word.replace("\n", " ").strip() or "␣"
    return word if len(word) <= limit else word[: limit - 1] + "…"


def word_columns(
    tokens: Sequence[str],
    special: Sequence[bool],
    groups: Sequence[Sequence[int]],
    scores: Sequence[float],
    words: Sequence[str] | None = None,
    show_special: bool = False,
) -> tuple[list[str], np.ndarray]:
    """The figure's columns: word labels and word scores (sum over the word's tokens; non-finite -> 0), specials
    left out unless `show_special` (or unless nothing else is left)."""
    if words is None:
        words = ["".join(tokens[t].removeprefix("##") for t in g) for g in groups]
    keep = [i for i, g in enumerate(groups) if show_special or not all(special[t] for t in g)]
    if not keep:
        keep = list(range(len(groups)))
    labels = [_label(words[i]) for i in keep]
    values = np.array([sum(float(scores[t]) for t in groups[i]) for i in keep], dtype=float)
    return labels, np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def token_scores_png(
    tokens: Sequence[str],
    special: Sequence[bool],
    groups: Sequence[Sequence[int]],
    scores: Sequence[float],
    words: Sequence[str] | None = None,
    title: str = "token scores",
    subtitle: str | None = None,
    show_special: bool = False,
    ylabel: str = "score (word = sum of its tokens)",
) -> bytes:
    """PNG bytes of a bar chart + heat strip of per-word scores.

    tokens/special: per token; groups: token indices per word; scores: per token; words: the word strings (default:
    the tokens of each group joined, ``##`` removed).
    """
    labels, values = word_columns(tokens, special, groups, scores, words, show_special)

    signed = bool((values < 0).any() and (values > 0).any())
    bound = float(np.abs(values).max()) or 1.0
    norm: Normalize
    if signed:
        cmap, norm = colormaps[DIVERGING], TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    else:
        cmap = _offset(colormaps[SEQUENTIAL])
        norm = Normalize(vmin=min(0.0, float(values.min())), vmax=max(float(values.max()), 1e-12))
    colours = cmap(norm(values))

    per_row = min(WORDS_PER_ROW, len(labels))
    rows = math.ceil(len(labels) / per_row)
    longest = max(len(label) for label in labels)
    width = min(16.0, max(5.0, 0.42 * per_row + 1.5))
    row_height = 2.2 + 0.075 * longest
    with style():
        fig = Figure(figsize=(width, 0.6 + rows * row_height), layout="constrained")
        axes = fig.subplots(rows * 2, 1, gridspec_kw={"height_ratios": [5, 1] * rows}, squeeze=False)[:, 0]
        ymin, ymax = min(0.0, float(values.min())), max(0.0, float(values.max()))
        pad = 0.08 * ((ymax - ymin) or 1.0)
        for r in range(rows):
            part = slice(r * per_row, (r + 1) * per_row)
            vals, labs, cols = values[part], labels[part], colours[part]
            x = np.arange(len(vals))
            bar_ax, strip_ax = axes[2 * r], axes[2 * r + 1]
            bar_ax.bar(x, vals, color=cols, edgecolor=INK, linewidth=0.3, width=0.8)
            bar_ax.set_xlim(-0.6, per_row - 0.4)
            bar_ax.set_ylim(ymin - (pad if ymin < 0 else 0), ymax + pad)
            bar_ax.set_xticks([])
            bar_ax.spines["bottom"].set_visible(False)
            if signed:
                bar_ax.axhline(0.0, color=MUTED, linewidth=0.8)
            bar_ax.set_ylabel(ylabel if r == 0 else "", color=MUTED, fontsize=8)
            strip = np.full((1, per_row), np.nan)
            strip[0, : len(vals)] = vals
            strip_ax.imshow(strip, aspect="auto", cmap=cmap, norm=norm,
                            extent=(-0.5, per_row - 0.5, 0, 1))
            strip_ax.set_xlim(-0.6, per_row - 0.4)
            strip_ax.set_yticks([])
            strip_ax.grid(False)
            for side in ("top", "right", "left", "bottom"):
                strip_ax.spines[side].set_visible(False)
            strip_ax.set_xticks(x, labs, rotation=55 if longest > 3 else 0, ha="right" if longest > 3 else "center",
                                rotation_mode="anchor")
            strip_ax.tick_params(axis="x", length=0, pad=4)
        head = axes[0]
        head.set_title(title, loc="left", color=INK)
        if subtitle:
            head.text(0.0, 1.02, subtitle, transform=head.transAxes, fontsize=9, color=MUTED, va="bottom")
            head.set_title(title, loc="left", color=INK, pad=16)
        fig.colorbar(_mappable(cmap, norm), ax=list(axes), shrink=0.6, aspect=25,
                     pad=0.01).ax.tick_params(labelsize=8)
        return figure_png(fig)


def _offset(cmap):
    """The sequential map without its near-white start, so small scores stay visible on white."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(cmap(np.linspace(0.15, 1.0, 256)))


def _mappable(cmap, norm):
    from matplotlib.cm import ScalarMappable

    mappable = ScalarMappable(norm=norm, cmap=cmap)
    mappable.set_array([])
    return mappable
