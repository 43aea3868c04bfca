"""Make the real result documents the viewer tests render (tests/fixtures/page/*.json): one engine run per model,
so the page tests check the real document shapes without running models themselves.

    HF_HUB_OFFLINE=1 .venv/bin/python -m scripts.page_fixtures
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "page"

JOBS = {
    "minilm-rt": ({"text": "A gripping, beautifully acted film that never drags."},
                  ["gradient", "integrated_gradients", "occlusion", "lime", "attention_rollout", "attention",
                   "sigma"],
                  {"lime": {"samples": 200}, "integrated_gradients": {"steps": 16},
                   "sigma": {"max_steps": 40, "eval_samples": 32, "samples": 2}}),
    "cnn-rt": ({"text": "A gripping, beautifully acted film that never drags."},
               ["gradient", "grad_x_input", "lrp"], {}),
    "esim-50": ({"premise": "A man is sleeping on a couch.", "hypothesis": "A person rests."},
                ["attention_saliency", "gating", "gradient"], {}),
}


def main(names: list[str]) -> None:
    from worker.methods import explain
    from worker.models import load_model

    OUT.mkdir(parents=True, exist_ok=True)
    for name in names or list(JOBS):
        inputs, methods, params = JOBS[name]
        adapter = load_model(name, device="cpu").load()
        ex = explain(adapter, inputs, methods, params=params, figures=False)
        ex.result["model"] = {"name": name, "revision": adapter.revision}
        (OUT / f"{name}.json").write_text(json.dumps(ex.result, separators=(",", ":")))
        print(name, (OUT / f"{name}.json").stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1:])
