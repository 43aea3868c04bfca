"""Sigma figures (docs/api.md; Guan et al. Fig. 2, 3/7 and 8), in the one Lantern style.

- :func:`information_map_png`: rows × words heat map of the information kept, −log(σ/bound) (0 = discarded, darker =
  more kept). Rows are layers (Fig. 3/7) or decoder time steps (Fig. 2: :func:`timestamp_map_png`).
- :func:`attributes_png`: r_{i,c} per layer, one line per concept (Fig. 8).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from worker.render.style import INK, MUTED, SEQUENTIAL, figure_png, style
from worker.render.tokens import _label


def information_map_png(rows: Sequence[str], words: Sequence[str], values: np.ndarray | Sequence[Sequence[float]],
                        title: str = "information kept per layer", subtitle: str | None = None,
                        row_label: str = "layer", value_label: str = "−log(σ / bound), word = sum of its tokens") -> bytes:
    """values: len(rows) × len(words), drawn as they are (NaN = blank)."""
    data = np.asarray(values, dtype=float)
    labels = [_label(w) for w in words]
    longest = max((len(x) for x in labels), default=1)
    width = min(18.0, max(6.0, 0.45 * len(labels) + 2.5))
    height = min(14.0, max(2.2, 0.38 * len(rows) + 1.2 + 0.07 * longest))
    finite = data[np.isfinite(data)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    with style():
        fig = Figure(figsize=(width, height), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=SEQUENTIAL, vmin=0.0, vmax=vmax,
                          interpolation="nearest")
        ax.grid(False)
        ax.set_xticks(np.arange(len(labels)), labels, rotation=55 if longest > 3 else 0,
                      ha="right" if longest > 3 else "center", rotation_mode="anchor")
        ax.set_yticks(np.arange(len(rows)), [_label(r, 24) for r in rows])
        ax.tick_params(length=0)
        ax.set_ylabel(row_label, color=MUTED)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        if subtitle:
            ax.text(0.0, 1.02, subtitle, transform=ax.transAxes, fontsize=9, color=MUTED, va="bottom")
        ax.set_title(title, loc="left", color=INK, pad=16 if subtitle else 6)
        bar = fig.colorbar(image, ax=ax, shrink=0.8, aspect=20, pad=0.01)
        bar.set_label(value_label, color=MUTED, fontsize=8)
        bar.ax.tick_params(labelsize=8)
        return figure_png(fig)


def timestamp_map_png(steps: Sequence[str], words: Sequence[str], values: np.ndarray | Sequence[Sequence[float]],
                      title: str = "information kept per decoder step", subtitle: str | None = None) -> bytes:
    """Guan Fig. 2: one row per time step t (the state after step t), one column per input token."""
    return information_map_png(steps, words, values, title=title, subtitle=subtitle, row_label="time step")


def attributes_png(layers: Sequence[str], r: Mapping[str, Sequence[float]], word: str,
                   title: str | None = None) -> bytes:
    """Guan Fig. 8: r_{i,c} = A_i − A_c per layer for each concept c (lower = the layer uses the concept more)."""
    with style():
        fig = Figure(figsize=(max(5.0, 0.7 * len(layers) + 2.5), 3.6), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(layers))
        for concept, values in r.items():
            ax.plot(x, np.asarray(values, dtype=float), marker="o", linewidth=1.6, markersize=4, label=concept)
        ax.set_xticks(x, list(layers), rotation=30 if len(layers) > 5 else 0, ha="right" if len(layers) > 5 else
                      "center")
        ax.set_ylabel("r(i, c) = A_i − A_c", color=MUTED)
        ax.set_title(title or f"word attributes of “{_label(word)}” per layer", loc="left", color=INK)
        ax.legend(frameon=False, fontsize=8, loc="best")
        return figure_png(fig)
