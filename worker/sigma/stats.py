"""σ_S statistics: the per-element std of each layer over a reference sample of inputs, stored with the model.

File ``sigma_stats.safetensors`` in the bundle directory; one tensor per layer, key = the layer name (docs/api.md, layer names):
``H`` floats, the std of each hidden unit over every real token position (specials included, padding excluded) of the
reference sentences, or over the sentences for a ``B×H`` layer (``pool``, ``output``). The metadata records the
reference (``source``, ``count``), the model ``revision`` of the encoder weights and the Lantern ``format`` (1).

Made once per model by ``python -m scripts.sigma_stats MODEL`` (Rotten Tomatoes train sentences by default).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from worker.models.base import Adapter

FILE = "sigma_stats.safetensors"


def compute_stats(adapter: Adapter, texts: Sequence[str], layers: Sequence[str] | None = None,
                  batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Per-unit std of every layer (default: all) over the texts, in float64 running sums."""
    layers = list(layers or adapter.layer_names)
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = adapter.encode([{"text": t} for t in texts[start:start + batch_size]]).to(adapter.device)
            trace = adapter.forward(adapter.embed(enc), enc, capture=layers)
            mask = enc.attention_mask.to(torch.float64)
            for name in layers:
                h = trace.layers[name].to(torch.float64)
                if h.dim() == 3 and h.shape[1] == mask.shape[1]:
                    w = mask[:, :, None]
                    total, square, n = (h * w).sum((0, 1)), (h * h * w).sum((0, 1)), float(mask.sum())
                else:
                    h = h.reshape(h.shape[0], -1) if h.dim() != 3 else h.reshape(-1, h.shape[-1])
                    total, square, n = h.sum(0), (h * h).sum(0), float(h.shape[0])
                sums[name] = sums.get(name, 0) + total
                squares[name] = squares.get(name, 0) + square
                counts[name] = counts.get(name, 0.0) + n
    out = {}
    for name in layers:
        mean = sums[name] / counts[name]
        var = (squares[name] / counts[name] - mean ** 2).clamp_min(0.0) * counts[name] / max(counts[name] - 1, 1)
        out[name] = var.sqrt().to(torch.float32).cpu().contiguous()
    return out


def save_stats(stats: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(stats, str(path), metadata={"format": "1", **{k: str(v) for k, v in metadata.items()}})


def load_stats(adapter: Adapter) -> dict[str, torch.Tensor] | None:
    """The model's statistics (layer -> H std), or None when its bundle has none."""
    path = adapter.bundle_file(FILE)
    if path is None:
        return None
    from safetensors.torch import load_file

    return load_file(str(path))
