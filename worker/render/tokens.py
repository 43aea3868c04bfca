"""Token-score figure: words along the x axis, a bar per word and a heat strip under it.

Word score = sum of its tokens' scores (as ``word_scores``); specials ([CLS], [SEP], …) are hidden unless asked for.
Values are drawn as they are (no rescaling of the bars); the strip's colours are normalised to the largest |score|.
Long inputs wrap onto several rows so every word stays readable. Drawn on a Pillow canvas (:mod:`worker.render.raster`:
every token-scoring method of every job draws one, and matplotlib took ~0.3 s for it), in the matplotlib figures'
style, colour maps and tick positions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, Normalize, TwoSlopeNorm
from PIL import Image, ImageDraw

from worker.render.raster import (
    SMALL,
    TEXT,
    TITLE,
    font,
    png_bytes,
    rotated_text,
    text_size,
    tick_labels,
    ticks,
)
from worker.render.style import DIVERGING, INK, MUTED, SEQUENTIAL

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
    """PNG bytes of a bar chart + heat strip of per-word scores (drawn with :mod:`worker.render.raster`).

    tokens/special: per token; groups: token indices per word; scores: per token; words: the word strings (default:
    the tokens of each group joined, ``##`` removed).
    """
    labels, values = word_columns(tokens, special, groups, scores, words, show_special)
    scale = _scale(values)
    colours = _rgb(values, scale)
    per_row = min(WORDS_PER_ROW, len(labels))
    low, high = min(0.0, float(values.min())), max(0.0, float(values.max()))
    pad = 0.08 * ((high - low) or 1.0)
    axis = Axis(low - (pad if low < 0 else 0.0), high + pad)
    norm = scale[1]
    assert norm.vmin is not None and norm.vmax is not None  # _scale sets both
    bar_axis = Axis(float(norm.vmin), float(norm.vmax), count=4)
    angle = 55 if max(len(label) for label in labels) > 3 else 0
    label_height = max(_label_extent(label, font(TEXT), angle) for label in labels) + 12
    band = BAR_HEIGHT + GAP + STRIP_HEIGHT + label_height
    head = 16 + TITLE + 12 + ((SMALL + 12) if subtitle else 0)
    rows = math.ceil(len(labels) / per_row)
    left = 12 + SMALL + 10 + axis.width(font(SMALL + 2)) + 10
    right = left + per_row * COLUMN  # the plot's right edge; the colour scale after it
    width = max(right + 18 + 25 + bar_axis.width(font(SMALL)) + 12,
                left + max(text_size(title, font(TITLE, bold=True))[0],
                           text_size(subtitle or "", font(SMALL + 2))[0]) + 16)
    canvas = Image.new("RGB", (width, head + rows * band + 12), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 16), title, font=font(TITLE, bold=True), fill=INK)
    if subtitle:
        draw.text((left, 16 + TITLE + 10), subtitle, font=font(SMALL + 2), fill=MUTED)
    for r in range(rows):
        part = slice(r * per_row, (r + 1) * per_row)
        top = head + r * band
        _bars(draw, (left, top), values[part], colours[part], axis, per_row)
        _strip(canvas, draw, (left, top + BAR_HEIGHT + GAP), labels[part], colours[part], angle)
        if r == 0:
            _ylabel(canvas, ylabel, (12, top + BAR_HEIGHT // 2))
    _colourbar(draw, (right + 18, head), scale, bar_axis, rows * band - label_height)
    return png_bytes(canvas)


class Axis:
    """A value range with matplotlib's tick positions and labels that write every tick exactly."""

    def __init__(self, low: float, high: float, count: int = 5):
        self.low, self.high = low, high
        self.marks = ticks(low, high, count)
        self.labels = tick_labels(self.marks)

    def width(self, face) -> int:
        return max((text_size(label, face)[0] for label in self.labels), default=0)

    def at(self, value: float, top: float, height: float) -> float:
        """The pixel row of `value` on an axis drawn from `top` down `height` pixels."""
        return top + height * (self.high - value) / ((self.high - self.low) or 1.0)


COLUMN, BAR_HEIGHT, STRIP_HEIGHT, GAP = 63, 300, 62, 14  # pixels at 150 dpi (a column is 0.42 in, as before)
GRID, SPINE = "#e5e7eb", "#d1d5db"


def _scale(values: np.ndarray) -> tuple[Colormap, Normalize]:
    """The diverging map centred on 0 when the values have both signs, else the sequential map without its
    near-white start (small scores stay visible on white), normalised to the values."""
    if (values < 0).any() and (values > 0).any():
        bound = float(np.abs(values).max())
        return colormaps[DIVERGING], TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    norm = Normalize(vmin=min(0.0, float(values.min())), vmax=max(float(values.max()), 1e-12))
    return _offset(colormaps[SEQUENTIAL]), norm


def _rgb(values: np.ndarray, scale: tuple[Colormap, Normalize]) -> list[tuple[int, int, int]]:
    cmap, norm = scale
    return [tuple(c) for c in (np.asarray(cmap(norm(values)))[:, :3] * 255).round().astype(int).tolist()]


def _label_extent(label: str, face, angle: float) -> int:
    w, h = text_size(label, face)
    a = math.radians(angle)
    return int(w * math.sin(a) + h * math.cos(a))


def _bars(draw: ImageDraw.ImageDraw, origin: tuple[int, int], values: np.ndarray, colours: list[tuple[int, int, int]],
          axis: Axis, per_row: int) -> None:
    """One row's bars with the y grid, its tick labels and (for signed values) the zero line."""
    x0, y0 = origin
    right = x0 + COLUMN * per_row

    def y(v: float) -> float:
        return axis.at(v, y0, BAR_HEIGHT)

    face = font(SMALL + 2)
    for v, text in zip(axis.marks, axis.labels, strict=True):
        draw.line([(x0, y(v)), (right, y(v))], fill=GRID, width=1)
        w, h = text_size(text, face)
        draw.text((x0 - 10 - w, y(v) - h / 2 - 2), text, font=face, fill=MUTED)
    draw.line([(x0 - 1, y0), (x0 - 1, y0 + BAR_HEIGHT)], fill=SPINE, width=1)
    for i, (v, rgb) in enumerate(zip(values.tolist(), colours, strict=True)):
        a, b = sorted((y(0.0), y(v)))
        left = x0 + i * COLUMN + COLUMN * 0.1
        draw.rectangle([left, a, left + COLUMN * 0.8, b], fill=rgb, outline=INK, width=1)
    if axis.low < 0 < axis.high:
        draw.line([(x0, y(0.0)), (right, y(0.0))], fill=MUTED, width=2)


def _strip(canvas: Image.Image, draw: ImageDraw.ImageDraw, origin: tuple[int, int], labels: list[str],
           colours: list[tuple[int, int, int]], angle: float) -> None:
    """The heat strip (one cell per word) and the word labels under it."""
    x0, y0 = origin
    face = font(TEXT)
    for i, (label, rgb) in enumerate(zip(labels, colours, strict=True)):
        draw.rectangle([x0 + i * COLUMN, y0, x0 + (i + 1) * COLUMN - 1, y0 + STRIP_HEIGHT], fill=rgb)
        centre = x0 + i * COLUMN + COLUMN / 2
        if angle:
            rotated_text(canvas, label, (centre + 6, y0 + STRIP_HEIGHT + 8), face, INK, angle)
        else:
            w, _ = text_size(label, face)
            draw.text((centre - w / 2, y0 + STRIP_HEIGHT + 8), label, font=face, fill=INK)


def _ylabel(canvas: Image.Image, text: str, centre: tuple[int, int]) -> None:
    face = font(SMALL)
    w, _ = text_size(text, face)
    rotated_text(canvas, text, (centre[0], centre[1] - w / 2), face, MUTED, 90)


def _colourbar(draw: ImageDraw.ImageDraw, origin: tuple[int, int], scale: tuple[Colormap, Normalize], axis: Axis,
               height: int) -> None:
    """The colour scale: 60 % of the plots' height, centred, with its own ticks."""
    bar = int(height * 0.6)
    x0, y0 = origin[0], origin[1] + (height - bar) // 2
    for n, rgb in enumerate(_rgb(np.linspace(axis.high, axis.low, bar), scale)):
        draw.line([(x0, y0 + n), (x0 + 16, y0 + n)], fill=rgb)
    draw.rectangle([x0, y0, x0 + 16, y0 + bar], outline=SPINE, width=1)
    face = font(SMALL)
    for v, text in zip(axis.marks, axis.labels, strict=True):
        y = axis.at(v, y0, bar)
        draw.line([(x0 + 16, y), (x0 + 21, y)], fill=MUTED, width=1)
        draw.text((x0 + 25, y - SMALL / 2 - 2), text, font=face, fill=MUTED)


def _offset(cmap):
    """The sequential map without its near-white start, so small scores stay visible on white."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(cmap(np.linspace(0.15, 1.0, 256)))
