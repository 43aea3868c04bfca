"""Heat-map grids (docs/api.md): attention maps per layer or head (query tokens × key tokens) and neuron traces
(neurons × tokens), in the one Lantern style. Values are drawn as given; each panel shares one colour scale so panels
can be compared (pass ``signed=True`` for a diverging scale centred on 0).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from worker.render.style import DIVERGING, INK, MUTED, SEQUENTIAL, figure_png, style
from worker.render.tokens import _label


def heatmaps_png(
    panels: Sequence[tuple[str, np.ndarray]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    subtitle: str | None = None,
    columns: int = 3,
    signed: bool = False,
    colour_label: str = "",
    cmap: str | None = None,
) -> bytes:
    """panels: (panel title, rows × cols values). Tick labels are drawn on every panel when they fit. `cmap`
    replaces the unsigned colour map (e.g. ``"magma"``: lighter = higher, as in textgenrnn's attention maps)."""
    n = len(panels)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    r, c = len(row_labels), len(col_labels)
    cell = 0.22 if max(r, c) > 24 else 0.32
    ticks = max(r, c) <= 64
    longest = max((len(_label(w)) for w in (*row_labels, *col_labels)), default=1) if ticks else 0
    pw, ph = c * cell + 0.08 * longest + 0.6, r * cell + 0.08 * longest + 0.6
    scale = min(1.0, 22.0 / (columns * pw), 30.0 / (rows * ph))
    stack = np.stack([np.asarray(v, dtype=float) for _, v in panels]) if panels else np.zeros((1, 1, 1))
    bound = float(np.nanmax(np.abs(stack))) or 1.0
    kwargs = ({"cmap": DIVERGING, "norm": TwoSlopeNorm(0.0, -bound, bound)} if signed
              else {"cmap": cmap or SEQUENTIAL, "vmin": min(0.0, float(np.nanmin(stack))), "vmax": bound})
    with style():
        fig = Figure(figsize=(max(4.0, columns * pw * scale + 1.2), max(2.5, rows * ph * scale + 0.9)),
                     layout="constrained")
        axes = fig.subplots(rows, columns, squeeze=False)
        image = None
        for k, ax in enumerate(axes.flat):
            if k >= n:
                ax.set_visible(False)
                continue
            name, values = panels[k]
            image = ax.imshow(np.asarray(values, dtype=float), interpolation="nearest", aspect="auto", **kwargs)
            ax.grid(False)
            ax.set_title(name, fontsize=9, loc="left", color=INK)
            for side in ("top", "right", "left", "bottom"):
                ax.spines[side].set_visible(False)
            ax.tick_params(length=0, labelsize=7)
            if ticks:
                ax.set_xticks(np.arange(c), [_label(w, 12) for w in col_labels], rotation=60, ha="right",
                              rotation_mode="anchor")
                ax.set_yticks(np.arange(r), [_label(w, 12) for w in row_labels])
            else:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(title if not subtitle else f"{title}\n{subtitle}", x=0.01, ha="left", fontsize=11,
                     fontweight="bold", color=INK)
        if image is not None:
            bar = fig.colorbar(image, ax=list(axes.flat), shrink=0.6, aspect=30, pad=0.01)
            bar.ax.tick_params(labelsize=7)
            if colour_label:
                bar.set_label(colour_label, color=MUTED, fontsize=8)
        return figure_png(fig)
