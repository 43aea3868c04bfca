"""Checks a job request against its model before anything is stored or enqueued (docs/api.md)."""
from __future__ import annotations

import math
from typing import Any

import marshmallow as ma

from service.config import Settings
from service.errors import Problem, invalid


def check_request(adapter: Any, request: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Raise a 4xx Problem for anything the worker would refuse; return the request with defaults filled in."""
    from worker.methods import registry

    methods = registry()
    errors: dict[str, Any] = {}
    unknown = [m for m in request["methods"] if m not in methods]
    if unknown:
        raise invalid(f"unknown method(s) {unknown}; see GET /v1/methods", "methods")
    refused = _refusals(adapter, [methods[m] for m in request["methods"]])
    if refused:
        raise invalid(refused, "methods")
    if adapter.has_head and request["target"] != "predicted" and request["target"] not in adapter.labels:
        from worker.methods import some_labels

        raise invalid(f"unknown target {request['target']!r}; labels are {some_labels(adapter.labels)}", "target")

    layers = request.get("layers")
    if layers is not None:
        bad = [layer for layer in layers if layer not in adapter.layer_names]
        if bad:
            raise invalid(f"unknown layer(s) {bad}; {adapter.name} has {adapter.layer_names}", "layers")

    params = dict(request.get("params") or {})
    for name in params:
        if name not in request["methods"]:
            errors.setdefault("params", {})[name] = [f"parameters for {name!r}, which is not in methods"]
    filled = {}
    for name in request["methods"]:
        try:
            filled[name] = methods[name].params().load(params.get(name) or {})
            _finite(filled[name], f"params.{name}")
            _within_limits(filled[name], settings)
            _method_check(methods[name], adapter, filled[name])
        except ma.ValidationError as e:
            errors.setdefault("params", {})[name] = e.messages
        except ValueError as e:
            errors.setdefault("params", {})[name] = [str(e)]
    if errors:
        raise Problem(422, "Invalid request", "some method parameters are invalid", errors)

    problem = input_problem(adapter, request["inputs"], settings)
    if problem:
        raise invalid(problem, "inputs")
    return {**request, "params": filled}


def input_problem(adapter: Any, inputs: dict[str, str], settings: Settings) -> str | None:
    """Why the worker would refuse this input, or None. The adapter's own encode (tokenizer and vocabulary only,
    no weights) is the judge, so texts that are empty once tokenised (e.g. only zero-width characters) are caught
    here as the worker would catch them."""
    from worker.models.base import InputError

    try:
        n_tokens = len(adapter.encode(inputs).tokens[0])
    except InputError as e:
        return str(e)
    if n_tokens > settings.max_tokens:
        return f"the input has {n_tokens} tokens; the limit is {settings.max_tokens}"
    return None


def check_items(adapter: Any, items: list[tuple[int, dict[str, str]]], settings: Settings) -> None:
    """Every (position, item) of an audit as the worker will see it: a 422 naming the first item it would refuse."""
    for position, item in items:
        problem = input_problem(adapter, {k: v for k, v in item.items() if k != "label"}, settings)
        if problem:
            raise invalid(f"item {position}: {problem}", "corpus")


def _refusals(adapter: Any, methods: list[Any]) -> str | None:
    """Why some of `methods` do not apply to the model (the capabilities each needs and the model does not offer,
    as the worker refuses them), with the methods that do apply; None when all apply."""
    from worker.methods import applicable_methods, refusal

    reasons = [why for why in (refusal(adapter, method) for method in methods) if why]
    if not reasons:
        return None
    return f"{'; '.join(reasons)} (methods that apply: {applicable_methods(adapter)})"


def _method_check(method: Any, adapter: Any, params: dict[str, Any]) -> None:
    """The method's own checks of its params against the model (layer names, patterns), as the worker runs them."""
    from worker.models.base import InputError

    if method.check is not None:
        try:
            method.check(adapter, params)
        except InputError as e:
            raise ValueError(str(e)) from None


def _finite(values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}.{key} must be a finite number")


def _within_limits(values: dict[str, Any], settings: Settings) -> None:
    """Work limits from configuration: ``samples`` ≤ max_samples, ``steps`` ≤ max_steps (LANTERN_MAX_*)."""
    for key, limit in (("samples", settings.max_samples), ("steps", settings.max_steps)):
        if isinstance(values.get(key), int) and values[key] > limit:
            raise ValueError(f"{key} is {values[key]}; this service allows at most {limit} (LANTERN_MAX_{key.upper()})")
