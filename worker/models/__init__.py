"""Model loading: zoo names and bundle paths -> adapters, cached per revision in one bounded cache per process.

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from worker.models.base import Adapter, Encoding, InputError, Trace
from worker.models.bundle import (
    ADAPTERS,
    BundleSpec,
    bundle_revision,
    is_causal_lm,
    is_seq2seq_lm,
    validate_bundle,
)
from worker.models.cache import ModelCache

__all__ = [
    "Adapter", "Encoding", "InputError", "Trace", "BundleSpec", "ZOO_DIR", "adapter_class", "bundle_dir", "bundle_revision",
    "cached_adapter", "clear_cache", "load_model", "model_card", "open_model", "set_cache_limit", "validate_bundle",
    "zoo_names", "zoo_revision",
]

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

_cache = ModelCache()  # the process's adapters by revision (worker.models.cache); bounded by set_cache_limit
_cache_lock = _cache.lock


def zoo_names() -> list[str]:
    """The built-in models that can be loaded now (a zoo directory with a config.json)."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if is_zoo(p.name))


def is_zoo(name: str) -> bool:
    """Whether `name` is one of `zoo_names()`: one stat, not a walk of the zoo (a submit asks it every time)."""
    return bool(_NAME.match(name)) and (ZOO_DIR / name / "config.json").is_file()


def bundle_dir(name: str) -> Path:
    """The directory of zoo model `name` (it may not exist yet, e.g. before `lantern zoo train`)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"{name!r} is not a valid zoo model name")
    return ZOO_DIR / name


# zoo name -> (when its files were last stamped, revision). Every job submission asks for its model's revision and
# stamping walks the bundle and its encoder twice and parses config.json (~2-3 ms, a quarter of a submit's CPU);
# zoo files change only under `lantern zoo train`, which a second's delay does not hurt.
_zoo_revisions: dict[str, tuple[float, str]] = {}
ZOO_REVISION_SECONDS = 1.0


def zoo_revision(name: str) -> str:
    """The revision of zoo model `name`, re-read from its files at most once per ZOO_REVISION_SECONDS."""
    now = time.monotonic()
    seen = _zoo_revisions.get(name)
    if seen is None or now - seen[0] >= ZOO_REVISION_SECONDS:
        seen = _zoo_revisions[name] = (now, bundle_revision(bundle_dir(name)))
    return seen[1]


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    text = os.fspath(name_or_path)
    if isinstance(text, str) and is_zoo(text):
        return ZOO_DIR / text
    path = Path(text)
    if path.is_dir():
        return path
    raise InputError(f"unknown model {text!r}: not a zoo model ({', '.join(zoo_names())}) nor a bundle directory")


def load_model(name_or_path: str | os.PathLike[str], device: str | torch.device | None = None) -> Adapter:
    """The adapter for a zoo name or a bundle directory; weights are read on first embed/forward.

    Adapters are cached by revision (sha256 of the bundle's files), so loading the same bundle twice is cheap and a
    changed bundle is a different model. The cache keeps the most recently used few (set_cache_limit). `device`
    moves the (cached) adapter there.
    """
    path = _resolve(name_or_path)
    spec = validate_bundle(path)
    revision = bundle_revision(path)
    return cached_adapter(revision, lambda: _build(spec, revision), device)


def cached_adapter(revision: str, build: Callable[[], Adapter], device: str | torch.device | None = None) -> Adapter:
    """The process's adapter for `revision`, made by `build()` (once, however many threads ask) when not cached."""
    adapter = _cache.get(revision, build)
    if device is not None and adapter.device != torch.device(device):
        adapter.to(device)
    return adapter


def open_model(name_or_path: str | os.PathLike[str]) -> Adapter:
    """A new adapter outside the cache: for a one-off check whose weights must not stay in the process."""
    path = _resolve(name_or_path)
    return _build(validate_bundle(path), bundle_revision(path))


def _build(spec: BundleSpec, revision: str) -> Adapter:
    kind = spec.config.get("adapter", "hf") if spec.kind == "lantern" else "hf"
    if spec.kind == "hf" and is_causal_lm(spec.config):
        kind = "causal_lm"  # a plain Hugging Face causal LM folder (worker.models.causal_lm)
    if spec.kind == "hf" and is_seq2seq_lm(spec.config):
        kind = "seq2seq_lm"  # a plain Hugging Face encoder–decoder LM folder (worker.models.seq2seq_lm)
    # the concrete adapter classes take (spec, revision); the abstract base declares no constructor
    factory = cast(Callable[[BundleSpec, str], Adapter], adapter_class(kind))
    return factory(spec, revision)


def adapter_class(name: str) -> type[Adapter]:
    """The adapter class for a bundle's config.json "adapter" (a key of bundle.ADAPTERS; "hf" for plain HF dirs)."""
    module, _, cls = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def clear_cache() -> None:
    """Forget the loaded adapters (tests; a worker that must free memory)."""
    _cache.clear()


def set_cache_limit(models: int) -> None:
    """Keep at most this many adapters in the process (LANTERN_MODEL_CACHE_SIZE; the least recently used go)."""
    _cache.limit = models


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
