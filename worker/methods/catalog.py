"""The methods the engine knows and which of them apply to a model. A module of its own so that request
validation (worker/methods/request.py) reads it without importing its own package's `__init__`."""
from __future__ import annotations

import dataclasses
import importlib

from worker.capabilities import GENERATION_METHODS, METHODS, Capability, applicable
from worker.methods.base import Method
from worker.methods.sanity_results import PATH as SANITY_FILE
from worker.methods.sanity_results import load as load_sanity
from worker.models.base import Adapter

HEAD_WORDS = "head (a model with an output head)"


# (METHODS' names, sanity.json's mtime) -> the registry: a submit validates against it, and building it re-read
# sanity.json every time; a method added to METHODS (tests/unit/test_extending.py) or a new sanity.json rebuilds it
_built: dict[tuple[tuple[str, ...], int], dict[str, Method]] = {}


def registry() -> dict[str, Method]:
    """Every method of `worker.capabilities.METHODS`, in its order: `METHOD` of `worker.methods.<name>`."""
    try:
        stamp = SANITY_FILE.stat().st_mtime_ns
    except OSError:
        stamp = 0
    key = (tuple(METHODS), stamp)
    built = _built.get(key)
    if built is None:  # replaced whole, so a thread reading the old entry never sees it half-made
        built = _build()
        _built.clear()
        _built[key] = built
    return dict(built)  # a dict of its own: a caller may add to it


def _build() -> dict[str, Method]:
    sanity = load_sanity()  # the model-randomisation check's stored result, per method (worker/methods/sanity.py)
    methods = {}
    for name in METHODS:
        method: Method = importlib.import_module(f"worker.methods.{name}").METHOD
        if method.name != name:
            raise ImportError(f"worker.methods.{name} defines the method {method.name!r}, not {name!r}")
        if name in sanity:
            method = dataclasses.replace(method, sanity={**method.sanity, **sanity[name]})
        methods[name] = method
    return methods


def applicable_methods(adapter: Adapter) -> list[str]:
    """The methods that apply to `adapter`: those whose requirement its capabilities meet."""
    return applicable(adapter.capabilities)


def refusal(adapter: Adapter, method: Method) -> str | None:
    """Why `method` does not apply to `adapter`, naming the capabilities it lacks, or None."""
    if Capability.GENERATION in adapter.capabilities:
        return None if method.name in GENERATION_METHODS else \
            f"method {method.name!r} does not apply to generative language models such as {adapter.name}"
    missing = [HEAD_WORDS if gap == Capability.HEAD else gap for gap in method.missing(adapter)]
    if not missing:
        return None
    return f"method {method.name!r} does not apply to {adapter.name}: it needs {', '.join(missing)}, " \
           f"which {adapter.name} does not offer"


def some_labels(labels: list[str], limit: int = 20) -> str:
    """A label list for a message: all of a classifier's, the first `limit` of a language model's vocabulary."""
    shown = ", ".join(map(repr, labels[:limit]))
    return f"[{shown}]" if len(labels) <= limit else f"[{shown}, …] ({len(labels)} in all)"
