"""Mean faithfulness of the token-scoring methods on the trained zoo classifiers (the README's table).

    python -m scripts.faithfulness_table [--models minilm-rt bilstm-rt cnn-rt transformer-rt]
        [--methods gradient grad_x_input integrated_gradients smoothgrad occlusion lime shap lrp] [-n 50]
        [--params '{"lime": {"samples": 200}}'] [--seed 0] [--out table.json]

For each model and method: the mean over the first N Rotten Tomatoes *test* sentences (worker.data.rt, Lantern's
fixed split) of the ``faithfulness`` document that the service attaches to the method's result (docs/extending.md;
worker/methods/faithfulness.py): AOPC comprehensiveness, sufficiency, the same for the seeded random ranking, and
``lift`` = comprehensiveness − random comprehensiveness (higher = the method's top tokens matter more than random
ones). The numbers come from ``worker.methods.explain_batch`` (target = the predicted class, score = the logit, the
methods' default parameters unless --params overrides them, seed 0), so they are exactly what a job returns.
Also reported: the share of sentences with lift > 0, the standard error of the mean lift, the normalised
comprehensiveness and sufficiency (Edin et al. 2024; ``faithfulness.normalized``: 1 = the best ranking found for the
sentence, 0 = the worst) and the method's mean ``seconds`` per sentence. A method that does not apply to a model (lrp
without LRP rules) is left out of that model's rows.

Prints a markdown table; ``--out`` writes the per-model, per-method means (and the settings) as JSON.
Set HF_HUB_OFFLINE=1 (and OMP_NUM_THREADS) as for any run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

MODELS = ("minilm-rt", "bilstm-rt", "cnn-rt", "transformer-rt")
METHODS = ("gradient", "grad_x_input", "integrated_gradients", "smoothgrad", "occlusion", "lime", "shap", "lrp")
KEYS = ("comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency", "lift",
        "normalized_comprehensiveness", "normalized_sufficiency", "seconds")


def faithfulness_rows(adapter, texts: list[str], methods: list[str], params: dict[str, dict[str, Any]],
                      seed: int = 0, batch: int = 10) -> dict[str, list[dict[str, float]]]:
    """method -> one row per text: the service's faithfulness numbers (KEYS) for that text."""
    from worker.methods import explain_batch

    rows: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for start in range(0, len(texts), batch):
        chunk = [{"text": t} for t in texts[start : start + batch]]
        chosen = {m: params[m] for m in methods if m in params}
        for ex in explain_batch(adapter, chunk, methods, params=chosen, seed=seed, figures=False):
            for m in methods:
                part = ex.result["methods"][m]
                f, norm = part["faithfulness"], part["faithfulness"]["normalized"]
                rows[m].append({"comprehensiveness": f["comprehensiveness"], "sufficiency": f["sufficiency"],
                                "random_comprehensiveness": f["random"]["comprehensiveness"],
                                "random_sufficiency": f["random"]["sufficiency"], "lift": f["lift"],
                                "normalized_comprehensiveness": norm["comprehensiveness"],
                                "normalized_sufficiency": norm["sufficiency"], "seconds": part["seconds"]})
    return rows


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    n = len(rows)
    out = {k: mean([r[k] for r in rows if r[k] is not None]) for k in KEYS}  # normalized: null when flat
    lifts = [r["lift"] for r in rows]
    var = sum((v - out["lift"]) ** 2 for v in lifts) / max(n - 1, 1)
    out["lift_se"] = math.sqrt(var / n)
    out["share_lift_positive"] = sum(v > 0 for v in lifts) / n
    out["n"] = n
    return out


def markdown(table: dict[str, dict[str, dict[str, float]]], n: int) -> str:
    lines = ["| model | method | comprehensiveness | sufficiency | random comp. | lift (± s.e.) | lift > 0 | "
             "normalized comp. / suff. | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for model, methods in table.items():
        for method, s in methods.items():
            lines.append(f"| `{model}` | `{method}` | {s['comprehensiveness']:.3f} | {s['sufficiency']:.3f} | "
                         f"{s['random_comprehensiveness']:.3f} | {s['lift']:+.3f} ± {s['lift_se']:.3f} | "
                         f"{s['share_lift_positive']:.2f} | {s['normalized_comprehensiveness']:.2f} / "
                         f"{s['normalized_sufficiency']:.2f} | {s['seconds']:.3f} |")
    lines.append(f"\n(N = {n} Rotten Tomatoes test sentences per row.)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("-n", type=int, default=50, help="RT test sentences (the first N of the split)")
    parser.add_argument("--params", type=json.loads, default={}, help="JSON: {method: {param: value}}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from worker.data.rt import rt_split
    from worker.methods import applicable_methods
    from worker.models import load_model

    texts = [text for text, _ in rt_split("test")[: args.n]]
    table: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    for model in args.models:
        adapter = load_model(model).load()
        methods = [m for m in args.methods if m in applicable_methods(adapter)]
        started = time.perf_counter()
        rows = faithfulness_rows(adapter, texts, methods, args.params, args.seed)
        seconds[model] = round(time.perf_counter() - started, 1)
        table[model] = {m: summarise(rows[m]) for m in methods}
        print(f"{model}: {seconds[model]} s", flush=True)
    print(markdown(table, len(texts)))
    if args.out:
        args.out.write_text(json.dumps({"n": len(texts), "seed": args.seed, "params": args.params,
                                        "seconds": seconds, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
