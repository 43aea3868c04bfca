"""Model loading: zoo names and bundle paths -> adapters, cached per revision (DESIGN §4, §9).

    from worker.models import load_model
    adapter = load_model("minilm-rt")          # a zoo name, or a bundle directory path
    enc = adapter.encode({"text": "a fine film"})
    trace = adapter.forward(adapter.embed(enc), enc, capture={"layer.3"})

Bundle format and safety rules: :mod:`worker.models.bundle`. Zoo bundles live in ``worker/zoo/<name>/``.
"""
from __future__ import annotations

import importlib
import os
import re
import threading
from pathlib import Path
from typing import Any

import torch

from worker.models.base import Adapter, Encoding, InputError, Trace
from worker.models.bundle import ADAPTERS, BundleSpec, bundle_revision, validate_bundle

__all__ = [
    "Adapter", "Encoding", "InputError", "Trace", "BundleSpec", "ZOO_DIR", "adapter_class", "bundle_dir", "bundle_revision",
    "clear_cache", "load_model", "model_card", "validate_bundle", "zoo_names",
]

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

_cache: dict[str, Adapter] = {}  # revision -> adapter (a worker keeps its models)
_cache_lock = threading.Lock()


def zoo_names() -> list[str]:
    """The built-in models that can be loaded now (a zoo directory with a config.json)."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file() and _NAME.match(p.name))


def bundle_dir(name: str) -> Path:
    """The directory of zoo model `name` (it may not exist yet, e.g. before `lantern zoo train`)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"{name!r} is not a valid zoo model name")
    return ZOO_DIR / name


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    text = os.fspath(name_or_path)
    if isinstance(text, str) and _NAME.match(text) and (ZOO_DIR / text / "config.json").is_file():
        return ZOO_DIR / text
    path = Path(text)
    if path.is_dir():
        return path
    raise InputError(f"unknown model {text!r}: not a zoo model ({', '.join(zoo_names())}) nor a bundle directory")


def load_model(name_or_path: str | os.PathLike[str], device: str | torch.device | None = None) -> Adapter:
    """The adapter for a zoo name or a bundle directory; weights are read on first embed/forward.

    Adapters are cached by revision (sha256 of the bundle's files), so loading the same bundle twice is cheap and a
    changed bundle is a different model. `device` moves the (cached) adapter there.
    """
    path = _resolve(name_or_path)
    spec = validate_bundle(path)
    revision = bundle_revision(path)
    with _cache_lock:
        adapter = _cache.get(revision)
        if adapter is None:
            kind = spec.config.get("adapter", "hf") if spec.kind == "lantern" else "hf"
            adapter = adapter_class(kind)(spec, revision)
            _cache[revision] = adapter
    if device is not None:
        adapter.to(device)
    return adapter


def adapter_class(name: str) -> type[Adapter]:
    """The adapter class for a bundle's config.json "adapter" (a key of bundle.ADAPTERS; "hf" for plain HF dirs)."""
    module, _, cls = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def clear_cache() -> None:
    """Forget the loaded adapters (tests; a worker that must free memory)."""
    with _cache_lock:
        _cache.clear()


def model_card(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a person (or `GET /v1/models/{name}`) wants to know, without reading the weights: layers, labels,
    methods that apply, revision, and from a Lantern bundle its description, licence, source and metrics."""
    adapter = load_model(name_or_path)
    card = adapter.describe()
    spec: BundleSpec | None = getattr(adapter, "spec", None)
    if spec is not None and spec.kind == "lantern":
        for key in ("description", "license", "source", "encoder", "frozen_encoder", "metrics", "training"):
            if key in spec.config:
                card[key] = spec.config[key]
    card["zoo"] = Path(_resolve(name_or_path)).resolve().parent == ZOO_DIR.resolve()
    return card
