"""Make the σ_S statistics of a model (worker.sigma.stats) and store them in its bundle.

    python -m scripts.sigma_stats MODEL [--sentences 1000] [--out PATH]

MODEL is a zoo name or a bundle directory; the reference sample is the first N Rotten Tomatoes *train* sentences of
Lantern's fixed split (so no test sentence is used). Writes ``<bundle>/sigma_stats.safetensors`` unless --out is given.
Note that the file is part of the bundle, so it changes the model's revision.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from worker.data.rt import rt_split
    from worker.models import load_model
    from worker.sigma.stats import FILE, compute_stats, save_stats

    adapter = load_model(args.model).load()
    texts = [text for text, _ in rt_split("train")[: args.sentences]]
    stats = compute_stats(adapter, texts)
    out = args.out or Path(adapter.spec.path) / FILE
    save_stats(stats, out, {"source": "rt train split, first sentences", "count": str(len(texts)),
                            "model": adapter.name})
    print(f"{out}: {', '.join(f'{k} ({v.numel()})' for k, v in stats.items())}")


if __name__ == "__main__":
    main()
