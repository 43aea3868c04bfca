"""NLI figures (docs/api.md; Ghaeini et al. 2018 Fig. 1–3), in the one Lantern style.

- :func:`alignment_png`: premise × hypothesis heat maps with the words on both axes (attention, attention saliency),
  one panel per map side by side (two directions of one model, or one map of several models). Each panel is
  normalised to its own maximum for display (the paper's "normalized" maps); the JSON keeps the raw values.
- :func:`gates_png`: per gate, the signal norm and the saliency norm at each word, each curve divided by its maximum
  (Fig. 3), premise and hypothesis side by side; forward solid, backward dashed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
from matplotlib.figure import Figure

from worker.render.style import ACCENT, INK, MUTED, SEQUENTIAL, figure_png, style
from worker.render.tokens import _label


def _normalised(values: np.ndarray) -> np.ndarray:
    top = float(np.nanmax(np.abs(values))) if values.size else 0.0
    return values / top if top > 0 else values


def alignment_png(panels: Sequence[tuple[str, np.ndarray | Sequence[Sequence[float]]]], premise: Sequence[str],
                  hypothesis: Sequence[str] | Sequence[Sequence[str]], title: str,
                  subtitle: str | None = None, premises: Sequence[Sequence[str]] | None = None) -> bytes:
    """panels: (panel title, n × m values); rows = premise words, columns = hypothesis words. `premises` (one word
    list per panel) lets panels have different premises; then `hypothesis` may be one list per panel too."""
    rows_per = list(premises) if premises is not None else [premise] * len(panels)
    # a non-empty `hypothesis` whose first item is not a word is one word list per panel
    cols_per: list[Sequence[str]] = (cast("list[Sequence[str]]", list(hypothesis))
                                     if hypothesis and not isinstance(hypothesis[0], str)
                                     else [cast("Sequence[str]", hypothesis)] * len(panels))
    longest = max(len(_label(w)) for words in (*rows_per, *cols_per) for w in words)
    n = max(len(r) for r in rows_per)
    m = max(len(c) for c in cols_per)
    cell = 0.42
    width = min(24.0, len(panels) * (m * cell + 0.09 * longest + 1.0) + 0.8)
    height = min(14.0, n * cell + 0.09 * longest + 1.4)
    with style():
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        image = None
        for ax, (name, values), rows, cols in zip(axes, panels, rows_per, cols_per, strict=True):
            data = _normalised(np.asarray(values, dtype=float))
            image = ax.imshow(data, cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
            ax.grid(False)
            ax.set_xticks(np.arange(len(cols)), [_label(w) for w in cols], rotation=55, ha="right",
                          rotation_mode="anchor")
            ax.set_yticks(np.arange(len(rows)), [_label(w) for w in rows])
            ax.tick_params(length=0)
            ax.xaxis.tick_top()
            ax.set_xticks(np.arange(len(cols)), [_label(w) for w in cols], rotation=55, ha="left",
                          rotation_mode="anchor")
            ax.set_xlabel(name, color=INK, fontsize=10, fontweight="bold")
            for side in ("top", "right", "left", "bottom"):
                ax.spines[side].set_visible(False)
        axes[0].set_ylabel("premise", color=MUTED)
        fig.suptitle(title if not subtitle else f"{title}\n{subtitle}", x=0.01, ha="left", fontsize=11,
                     fontweight="bold", color=INK)
        assert image is not None  # panels is non-empty: max() over their words above raised otherwise
        fig.colorbar(image, ax=list(axes), shrink=0.7, aspect=25, pad=0.01,
                     label="normalised (÷ panel max)").ax.tick_params(labelsize=8)
        return figure_png(fig)


def gates_png(curves: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]],
              premise: Sequence[str], hypothesis: Sequence[str], title: str, subtitle: str | None = None) -> bytes:
    """curves[gate][direction][kind][sentence] -> normalised values per word (kind "signal" | "saliency", sentence
    "premise" | "hypothesis"). One row per gate, premise and hypothesis side by side."""
    gates = list(curves)
    words = {"premise": [_label(w) for w in premise], "hypothesis": [_label(w) for w in hypothesis]}
    width = min(22.0, 0.42 * (len(premise) + len(hypothesis)) + 3.5)
    with style():
        fig = Figure(figsize=(max(width, 7.0), 1.5 * len(gates) + 1.6), layout="constrained")
        axes = fig.subplots(len(gates), 2, squeeze=False, sharey=True,
                            gridspec_kw={"width_ratios": [max(len(premise), 2), max(len(hypothesis), 2)]})
        for r, gate in enumerate(gates):
            for c, sentence in enumerate(("premise", "hypothesis")):
                ax = axes[r, c]
                x = np.arange(len(words[sentence]))
                for direction, style_ in (("fwd", "-"), ("bwd", "--")):
                    if direction not in curves[gate]:
                        continue
                    for kind, colour in (("signal", MUTED), ("saliency", ACCENT)):
                        values = curves[gate][direction][kind][sentence]
                        ax.plot(x, values, style_, color=colour, marker="o", markersize=3, linewidth=1.4,
                                label=f"{kind} ({direction})")
                ax.set_ylim(-0.05, 1.08)
                ax.set_xticks(x, words[sentence] if r == len(gates) - 1 else [], rotation=55, ha="right",
                              rotation_mode="anchor")
                if c == 0:
                    ax.set_ylabel(gate, color=INK)
                if r == 0:
                    ax.set_title(sentence, fontsize=10, color=MUTED, loc="left")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper right", ncol=4, fontsize=8, frameon=False)
        fig.suptitle(title if not subtitle else f"{title}\n{subtitle}", x=0.01, ha="left", fontsize=11,
                     fontweight="bold", color=INK)
        return figure_png(fig)
