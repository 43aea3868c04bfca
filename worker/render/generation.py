"""Figures of a generation job (docs/api.md, generative models): the steps × tokens attribution map of a method and
the per-step probability curve of the generated tokens."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from worker.render.style import DIVERGING, SEQUENTIAL, figure_png, style


def _label(token: str) -> str:
    """A token as a tick label: visible spaces and newlines, at most 12 characters."""
    text = token.replace("\n", "⏎").replace(" ", "·")
    return text if len(text) <= 12 else text[:11] + "…"


def step_map_png(result: dict[str, Any], method: str, title: str) -> bytes:
    """Rows: generated steps (the token each explains); columns: every token; unread cells blank. Each row is
    scaled by its own largest |score| (signed methods diverge around 0)."""
    from matplotlib.figure import Figure

    scores = result["methods"][method]["scores"]
    values = np.array([[math.nan if v is None else v for v in row] for row in scores], dtype=float)
    scale = np.nanmax(np.abs(values), axis=1, keepdims=True)
    values = values / np.where(scale > 0, scale, 1.0)
    signed = bool(np.nanmin(values) < 0)
    tokens, P = result["tokens"], result["prompt_length"]
    rows, cols = values.shape
    with style():
        fig = Figure(figsize=(min(3 + 0.28 * cols, 40), min(1.6 + 0.3 * rows, 30)))
        ax = fig.add_subplot()
        ax.grid(False)
        cmap = DIVERGING if signed else SEQUENTIAL
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1 if signed else 0, vmax=1, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(cols), [_label(t) for t in tokens], rotation=90, fontsize=7)
        generated = result["generation"]["tokens"]
        ax.set_yticks(range(rows), [f"{s}: {_label(t)}" for s, t in enumerate(generated)], fontsize=7)
        ax.axvline(P - 0.5, color="0.3", linewidth=0.8)
        ax.set_xlabel("tokens (prompt | generated)")
        ax.set_ylabel("step: token explained")
        ax.set_title(f"{title}: rows scaled to their max |score|", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
        return figure_png(fig)


def probability_curve_png(result: dict[str, Any]) -> bytes:
    """The probability of each generated (or given) token at its step."""
    from matplotlib.figure import Figure

    generation = result["generation"]
    probs = generation["probabilities"]
    with style():
        fig = Figure(figsize=(min(3 + 0.3 * len(probs), 30), 3.2))
        ax = fig.add_subplot()
        ax.plot(range(len(probs)), probs, marker="o", linewidth=1.2)
        ax.set_xticks(range(len(probs)), [_label(t) for t in generation["tokens"]], rotation=90, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("p(token | prefix)")
        ax.set_xlabel("generated step")
        ax.set_title("probability of each generated token", fontsize=9)
        return figure_png(fig)
