"""Audit charts (docs/api.md): words most used per model (Guan Fig. 6), information per layer (Fig. 3/7 over a
corpus), r_{i,c} per layer (Fig. 8), faithfulness lift per method — models side by side."""
from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from worker.render.style import ACCENT, MUTED, figure_png, style

PALETTE = ("#c2410c", "#1d4ed8", "#15803d", "#7e22ce")


def top_words_png(aggregates: dict[str, Any], method: str, n: int = 12) -> bytes:
    models = [m for m, agg in aggregates["models"].items() if method in agg["methods"]]
    with style():
        fig = Figure(figsize=(3.6 * len(models) + 0.6, 0.32 * n + 1.4))
        for i, model in enumerate(models):
            ax = fig.add_subplot(1, len(models), i + 1)
            words = aggregates["models"][model]["methods"][method]["top_words"][:n][::-1]
            ax.barh([w["word"] for w in words], [w["total_share"] for w in words],
                    color=[MUTED if w["stop_word"] else PALETTE[i % len(PALETTE)] for w in words])
            ax.set_title(model)
            ax.set_xlabel("summed share of attribution")
            ax.grid(axis="x")
            ax.grid(axis="y", visible=False)
        fig.suptitle(f"Words most leveraged — {method} (grey: stop words)", x=0.02, ha="left", fontweight="bold")
        fig.tight_layout()
        return figure_png(fig)


def sigma_layers_png(aggregates: dict[str, Any]) -> bytes:
    with style():
        fig = Figure(figsize=(7, 3.6))
        ax = fig.add_subplot(1, 1, 1)
        for i, (model, agg) in enumerate(aggregates["models"].items()):
            layers = agg.get("sigma") or {}
            names = [name for name, v in layers.items() if v["word_information"]]
            means = [layers[name]["word_information"]["mean"] for name in names]
            stds = [layers[name]["word_information"]["std"] for name in names]
            color = PALETTE[i % len(PALETTE)]
            ax.plot(names, means, marker="o", color=color, label=model)
            ax.fill_between(names, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], color=color, alpha=0.15)
        ax.set_ylabel("word information  −log(σ/bound)")
        ax.set_title("Information kept per layer (mean ± std over words)")
        ax.legend(frameon=False)
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        return figure_png(fig)


def sigma_concepts_png(aggregates: dict[str, Any]) -> bytes:
    """Guan Fig. 8 over a corpus: mean r_{i,c} = A_i − A_c per layer for each concept, one panel per model."""
    models = [m for m, agg in aggregates["models"].items()
              if any((v.get("r") or {}) for v in (agg.get("sigma") or {}).values())]
    with style():
        fig = Figure(figsize=(4.2 * len(models) + 0.8, 3.6))
        for i, model in enumerate(models):
            ax = fig.add_subplot(1, len(models), i + 1)
            layers = aggregates["models"][model]["sigma"]
            concepts = list(next(v["r"] for v in layers.values() if v.get("r")))
            for j, concept in enumerate(concepts):
                names = [n for n, v in layers.items() if (v.get("r") or {}).get(concept)]
                ax.plot(names, [layers[n]["r"][concept]["mean"] for n in names], marker="o",
                        color=PALETTE[j % len(PALETTE)], label=concept)
            ax.set_title(model)
            ax.set_ylabel("mean r(i, c) = A_i − A_c")
            ax.tick_params(axis="x", rotation=30)
            ax.legend(frameon=False, fontsize=8)
        fig.suptitle("Word attributes per layer (lower = the concept is used more)", x=0.02, ha="left",
                     fontweight="bold")
        fig.tight_layout()
        return figure_png(fig)


def faithfulness_png(aggregates: dict[str, Any]) -> bytes:
    with style():
        fig = Figure(figsize=(7, 3.4))
        ax = fig.add_subplot(1, 1, 1)
        models = list(aggregates["models"])
        methods = sorted({m for agg in aggregates["models"].values() for m, part in agg["methods"].items()
                          if part.get("faithfulness")})
        width = 0.8 / max(1, len(models))
        for i, model in enumerate(models):
            parts = aggregates["models"][model]["methods"]
            lifts = [((parts.get(m) or {}).get("faithfulness") or {}).get("lift") or {} for m in methods]
            ax.bar([j + i * width for j in range(len(methods))], [lift.get("mean", 0) for lift in lifts], width,
                   yerr=[lift.get("std", 0) for lift in lifts], color=PALETTE[i % len(PALETTE)], label=model)
        ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(methods))], methods)
        ax.axhline(0, color=ACCENT, linewidth=0.8)
        ax.set_ylabel("AOPC comprehensiveness lift over random")
        ax.set_title("Faithfulness per method")
        ax.legend(frameon=False)
        fig.tight_layout()
        return figure_png(fig)


def charts(aggregates: dict[str, Any], methods: list[str]) -> dict[str, bytes]:
    """Every chart the aggregates support, by artifact name."""
    out = {}
    scoring = sorted({m for agg in aggregates["models"].values() for m in agg["methods"]})
    for method in scoring:
        out[f"top-words-{method}.png"] = top_words_png(aggregates, method)
    if any(agg.get("sigma") for agg in aggregates["models"].values()):
        out["information-per-layer.png"] = sigma_layers_png(aggregates)
    if any((v.get("r") or {}) for agg in aggregates["models"].values() for v in (agg.get("sigma") or {}).values()):
        out["concepts-per-layer.png"] = sigma_concepts_png(aggregates)
    if any(part.get("faithfulness") for agg in aggregates["models"].values() for part in agg["methods"].values()):
        out["faithfulness.png"] = faithfulness_png(aggregates)
    return out
