"""Checks a job request against its model before anything is stored or enqueued (docs/api.md).

The engine's `validate` (worker/methods/request.py) is the judge, as in the worker; this module gives it the
service's limits and answers its refusals as the API's 422 problems."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from service.config import Settings
from service.errors import Problem, invalid
from worker.methods.request import (
    BatchRequest,
    ExplainRequest,
    Limits,
    Options,
    RequestError,
    UnknownMethods,
    check_input,
    validate,
    validate_batch,
    validate_options,
)


def limits_of(settings: Settings) -> Limits:
    """The work limits of the configuration (LANTERN_MAX_TOKENS / _SAMPLES / _STEPS)."""
    return Limits(max_tokens=settings.max_tokens, max_samples=settings.max_samples, max_steps=settings.max_steps,
                  max_prompt_tokens=settings.max_prompt_tokens, max_new_tokens=settings.max_new_tokens)


def validated(adapter: Any, request: ExplainRequest, settings: Settings) -> ExplainRequest:
    """The request with each method's params filled in, or a 4xx Problem for anything the worker would refuse."""
    with _as_problem():
        return validate(adapter, request, limits_of(settings))


def validated_batch(adapter: Any, request: BatchRequest, settings: Settings) -> BatchRequest:
    """`validated` for a batch job: over LANTERN_MAX_BATCH_INPUTS inputs, or one the worker would refuse (named
    by its position), is a 422."""
    if len(request.inputs) > settings.max_batch_inputs:
        raise invalid(f"{len(request.inputs)} inputs; a batch job takes at most {settings.max_batch_inputs} "
                      "(LANTERN_MAX_BATCH_INPUTS)", "inputs")
    with _as_problem():
        return validate_batch(adapter, request, limits_of(settings))


def validated_options(adapter: Any, options: Options, settings: Settings) -> Options:
    """`validated` without an input: an audit's options (its items are checked by `check_items`)."""
    with _as_problem():
        return validate_options(adapter, options, limits_of(settings))


def check_request(adapter: Any, request: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A request's JSON: raise a 4xx Problem for anything the worker would refuse; return it with defaults filled
    in (its other keys, such as the model, as they are)."""
    return {**request, **validated(adapter, ExplainRequest.from_document(request), settings).document()}


def check_items(adapter: Any, items: list[tuple[int, dict[str, str]]], settings: Settings) -> None:
    """Every (position, item) of an audit as the worker will see it: a 422 naming the first item it would refuse."""
    limits = limits_of(settings)
    for position, item in items:
        try:
            check_input(adapter, _without_label(item), limits)
        except RequestError as e:
            raise invalid(f"item {position}: {e.detail}", "corpus") from None


def _without_label(item: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in item.items() if k != "label"}


@contextmanager
def _as_problem() -> Iterator[None]:
    """The engine's refusal as the API's answer: 422 with the field's errors; an unknown method also says where
    the known ones are listed."""
    try:
        yield
    except UnknownMethods as e:
        raise invalid(f"{e.detail}; see GET /v1/methods", e.field) from None
    except RequestError as e:
        raise Problem(422, "Invalid request", e.detail, e.errors) from None
