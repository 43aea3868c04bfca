"""Figures (docs/api.md): matplotlib with the Agg backend, one style, PNG bytes out; the token-score figure that
every token-scoring job draws is painted with Pillow in the same style (worker/render/raster.py: a job's time is its
method's, not matplotlib's layout).

Every figure is drawn inside :func:`style` on its own ``Figure`` object (no pyplot global state), so rendering is
safe in a worker thread and never opens a window.
"""
from __future__ import annotations

from worker.render.style import STYLE, figure_png, style
from worker.render.tokens import token_scores_png

__all__ = ["STYLE", "figure_png", "style", "token_scores_png"]
