"""The one Lantern figure style, and Figure -> PNG bytes."""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg", force=False)  # never a GUI backend in the service

import matplotlib.style
from matplotlib.figure import Figure

# Colours: a sequential map for "importance" (higher = darker), a diverging one for signed values.
SEQUENTIAL = "YlOrRd"
DIVERGING = "RdBu_r"
ACCENT = "#c2410c"
INK = "#1f2937"
MUTED = "#6b7280"
DPI = 150

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 10,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#d1d5db",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "xtick.color": INK,
    "ytick.color": MUTED,
    "xtick.labelsize": 10,
    "ytick.labelsize": 9,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "image.cmap": SEQUENTIAL,
    "svg.fonttype": "none",
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    with matplotlib.style.context(STYLE):
        yield


def figure_png(fig: Figure) -> bytes:
    """Render a Figure to PNG bytes (deterministic metadata: no software/date stamp)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    return buffer.getvalue()
