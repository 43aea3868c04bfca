"""The viewer's colour scales, quantised to CSS classes so a page needs no inline style (its CSP allows none).

Signed scores use ColorBrewer RdBu (colour-blind safe; red = raises the score, blue = lowers it), magnitudes
YlOrRd (the figures' sequential map, worker/render/style.py). ``assets/viewer.css`` defines the same colours as
classes ``d-5`` … ``d5`` and ``q0`` … ``q8``; a test checks the two agree.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

# RdBu from the most negative to the most positive (index 0 = d-5, 10 = d5)
DIVERGING = ("#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
             "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f")
# YlOrRd from none to the most (index 0 = q0)
SEQUENTIAL = ("#ffffff", "#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#800026")
STEPS = len(DIVERGING) // 2


class Scale:
    """One colour scale for a set of values: diverging when any is negative, sequential otherwise, spanning the
    largest magnitude (non-finite values get no colour)."""

    def __init__(self, values: Sequence[float | None]) -> None:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        self.signed = any(v < 0 for v in finite)
        self.top = max((abs(v) for v in finite), default=0.0)

    def level(self, value: float | None) -> str:
        """The CSS class of a value."""
        if value is None or not math.isfinite(value) or self.top == 0:
            return "q0" if not self.signed else "d0"
        if self.signed:
            return f"d{round(STEPS * value / self.top)}"
        return f"q{round((len(SEQUENTIAL) - 1) * value / self.top)}"

    def colour(self, value: float | None) -> str:
        """The fill colour of a value (SVG cells)."""
        cls = self.level(value)
        index = int(cls[1:])
        return DIVERGING[index + STEPS] if cls[0] == "d" else SEQUENTIAL[index]

    def legend(self) -> list[tuple[str, str]]:
        """(class, raw value) stops from the bottom of the scale to its top."""
        if self.signed:
            return [(f"d{i}", fmt(self.top * i / STEPS)) for i in range(-STEPS, STEPS + 1)]
        last = len(SEQUENTIAL) - 1
        return [(f"q{i}", fmt(self.top * i / last)) for i in range(last + 1)]


def fmt(value: float | None) -> str:
    """A raw value as shown on a page: 3 significant digits."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


def css() -> str:
    """The palette's CSS rules (as in assets/viewer.css)."""
    rules = [f".lantern .d{i - STEPS}{{background:{c}}}" for i, c in enumerate(DIVERGING)]
    rules += [f".lantern .q{i}{{background:{c}}}" for i, c in enumerate(SEQUENTIAL)]
    return "\n".join(rules)
