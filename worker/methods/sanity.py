"""Sanity check by model-parameter randomisation (Adebayo et al. 2018): an explanation method that explains the model
must give different token rankings for the trained model and for the same architecture with re-initialised weights.

``python -m worker.methods.sanity [N]`` explains N (default 50) Rotten Tomatoes test sentences with every
token-scoring method on ``minilm-rt`` and on a copy whose encoder and head are re-initialised (seeded), and writes,
per method, the mean Spearman rank correlation of the non-special tokens' scores to ``sanity.json`` beside this file,
with the trained model's mean faithfulness lift on the same sentences.
The registry attaches each method's entry to ``Method.sanity`` (``GET /v1/methods``); a method whose mean |ρ| is at or
above ``WEAK`` is flagged ``"weak": true`` (its explanations barely depend on what the model learnt).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch

from worker.methods.sanity_results import PATH, load
from worker.methods.stability import spearman

__all__ = ["PATH", "WEAK", "check", "load", "randomised", "spearman"]

WEAK = 0.5
# light settings so that the whole check runs in minutes on a CPU
PARAMS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": 10}, "integrated_gradients": {"steps": 16}, "lime": {"samples": 200},
    "perturbation": {"steps": 30, "lr": 0.2}, "shap": {"max_evals": 200},
}


def randomised(adapter, seed: int = 0):
    """A copy of a Hugging Face adapter (same config and tokenizer) with every weight re-initialised."""
    from worker.models.hf import HFAdapter

    copy = HFAdapter(adapter.spec, adapter.revision + "-randomised").load()
    torch.manual_seed(seed)
    copy.model.apply(copy.model._init_weights)
    if copy.head is not None:
        for module in copy.head.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
    return copy


def check(model: str = "minilm-rt", sentences: int = 50, methods: list[str] | None = None,
          log=print) -> dict[str, dict[str, Any]]:
    from worker.data.rt import rt_split
    from worker.methods import registry
    from worker.methods.base import Target
    from worker.methods.faithfulness import faithfulness
    from worker.models import load_model

    table = registry()
    trained = load_model(model)
    methods = methods or [m.name for m in table.values() if m.token_scores and m.needs_head and m.name != "sigma"
                          and not m.missing(trained)]  # e.g. lrp: models with LRP rules only
    random_model = randomised(trained)
    rhos: dict[str, list[float]] = {m: [] for m in methods}
    lifts: dict[str, list[float]] = {m: [] for m in methods}
    started = time.perf_counter()
    for text, _ in rt_split("test")[:sentences]:
        enc = trained.encode({"text": text})
        with torch.no_grad():
            label = trained.forward(trained.embed(enc), enc).head_logits().argmax(-1)
        keep = torch.tensor([not s for s in enc.special[0]])
        for name in methods:
            params = table[name].params().load(PARAMS.get(name, {}))
            a, b = (torch.tensor(table[name].run(m, enc, Target(label), params).json["scores"])
                    for m in (trained, random_model))
            rhos[name].append(spearman(a[keep], b[keep]))
            faith = faithfulness(trained, enc, a.tolist(), label)
            if faith is not None:  # None only for a model without a head or a mask token
                lifts[name].append(faith["lift"])
    log(f"{sentences} sentences in {time.perf_counter() - started:.0f}s")
    return {m: {"spearman": round(statistics.fmean(v), 3), "weak": abs(statistics.fmean(v)) >= WEAK,
                "sentences": len(v), "model": model, "randomised": "encoder and head re-initialised",
                "faithfulness_lift": round(statistics.fmean(lifts[m]), 4)}
            for m, v in rhos.items()}


if __name__ == "__main__":
    result = check(sentences=int(sys.argv[1]) if len(sys.argv) > 1 else 50)
    PATH.write_text(json.dumps({"threshold": WEAK, "methods": result}, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
