"""What an explanation is asked to do, typed and frozen, and the one function that validates it.

The API validates a request with `validate` at submit (the tokenizer and the config only: no weights are
loaded), the worker again before any work, so both refuse the same requests with the same words. The job row keeps
the request as JSON (`document()`); the worker rebuilds it with `from_document`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Self, TypeVar

import marshmallow as ma

from worker.capabilities import Capability
from worker.methods.base import SCORES, Method
from worker.methods.catalog import applicable_methods, refusal, registry, some_labels
from worker.methods.faithfulness import FULL, LEVELS
from worker.models.base import Adapter, InputError

PARAMS_INVALID = "some method parameters are invalid"


class RequestError(InputError):
    """A request the engine refuses, with the field at fault and field errors ({field: [messages]}, or for
    params {"params": {method: messages}}) that the API answers as they are."""

    def __init__(self, detail: str, field: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(detail if errors is None else f"{detail}: {_flat(errors.get(field, errors))}")
        self.detail, self.field = detail, field
        self.errors: dict[str, Any] = errors if errors is not None else {field: [detail]}


class UnknownMethods(RequestError):
    """Methods the registry does not know (the API adds where to find the ones it does)."""


@dataclass(frozen=True)
class Limits:
    """The service's work limits (LANTERN_MAX_TOKENS / _SAMPLES / _STEPS); None = no limit."""

    max_tokens: int | None = None
    max_samples: int | None = None
    max_steps: int | None = None
    max_prompt_tokens: int | None = None  # generative models (LANTERN_MAX_PROMPT_TOKENS / _MAX_NEW_TOKENS)
    max_new_tokens: int | None = None


NO_LIMITS = Limits()


@dataclass(frozen=True, kw_only=True)
class ExplainOptions:
    """What to run on any input: an audit's request is one (its items are the inputs)."""

    methods: Sequence[str]  # kept as a tuple, as are the layers
    layers: Sequence[str] | None = None
    target: str = "predicted"
    score: str = "logit"
    params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    faithfulness: str = FULL  # how much faithfulness work each token ranking gets (worker/methods/faithfulness.py)

    def __post_init__(self) -> None:
        # lists and dicts from JSON are accepted, and kept read-only so that a request cannot change on its way
        # (a null params entry is no params, as explain() has always taken it)
        set_ = object.__setattr__
        set_(self, "methods", tuple(self.methods))
        set_(self, "layers", None if self.layers is None else tuple(self.layers))
        set_(self, "params", MappingProxyType({name: MappingProxyType(dict(values or {}))
                                               for name, values in self.params.items()}))

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Self:
        """From a request's JSON (a job or audit row, a loaded API body); other keys of the row are ignored."""
        return cls(**_option_fields(doc))

    def document(self) -> dict[str, Any]:
        """The JSON of the row: lists and plain dicts, the keys of `from_document`. `faithfulness` only when it is
        not the default, so that a request that does not ask for less is the row (and request hash) it always was."""
        level = {} if self.faithfulness == FULL else {"faithfulness": self.faithfulness}
        return {"methods": list(self.methods), "layers": None if self.layers is None else list(self.layers),
                "target": self.target, "score": self.score, "params": self.plain_params(), "seed": self.seed,
                **level}

    def plain_params(self) -> dict[str, dict[str, Any]]:
        """Each method's params as a plain dict of its own (a method may keep or change what it is given)."""
        return {name: copy.deepcopy(dict(values)) for name, values in self.params.items()}


@dataclass(frozen=True, kw_only=True)
class ExplainRequest(ExplainOptions):
    """What to run on one input: a job's request."""

    inputs: Mapping[str, str]
    # generative models only (docs/api.md): {"max_new_tokens", "do_sample"}, and the contrast token(s)
    generate: Mapping[str, Any] | None = None
    contrast: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))
        if self.generate is not None:
            object.__setattr__(self, "generate", MappingProxyType(dict(self.generate)))
        if self.contrast is not None and not isinstance(self.contrast, str):
            object.__setattr__(self, "contrast", tuple(self.contrast))

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Self:
        return cls(inputs=doc["inputs"], generate=doc.get("generate"), contrast=doc.get("contrast"),
                   **_option_fields(doc))

    def document(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.generate is not None:
            extra["generate"] = dict(self.generate)
        if self.contrast is not None:
            extra["contrast"] = self.contrast if isinstance(self.contrast, str) else list(self.contrast)
        return {"inputs": dict(self.inputs), **super().document(), **extra}


def _option_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    defaults = ExplainOptions(methods=())
    return {"methods": doc["methods"], "layers": doc.get("layers"), "target": doc.get("target", defaults.target),
            "score": doc.get("score", defaults.score), "params": doc.get("params") or {},
            "seed": doc.get("seed", defaults.seed), "faithfulness": doc.get("faithfulness", defaults.faithfulness)}


@dataclass(frozen=True, kw_only=True)
class BatchRequest(ExplainOptions):
    """What to run on several inputs, each explained on its own (a batch job's request: `inputs` is a list)."""

    inputs: Sequence[Mapping[str, str]]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "inputs", tuple(MappingProxyType(dict(one)) for one in self.inputs))

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Self:
        return cls(inputs=doc["inputs"], **_option_fields(doc))

    def document(self) -> dict[str, Any]:
        return {"inputs": [dict(one) for one in self.inputs], **super().document()}


def request_of(doc: Mapping[str, Any]) -> ExplainRequest | BatchRequest:
    """A job's request from its JSON: a list of inputs is a batch, one input a single request."""
    return (BatchRequest if isinstance(doc["inputs"], list) else ExplainRequest).from_document(doc)


Options = TypeVar("Options", bound=ExplainOptions)


def validate(adapter: Adapter, request: ExplainRequest, limits: Limits = NO_LIMITS) -> ExplainRequest:
    """Everything a request can get wrong, checked before any work: the options, then the input. Returns the
    request with each method's params filled with their defaults; raises RequestError."""
    checked = validate_options(adapter, request, limits)
    check_input(adapter, request.inputs, limits)
    if Capability.GENERATION in adapter.capabilities or request.generate is not None or request.contrast is not None:
        check_generation(adapter, request, limits)
    return checked


def check_generation(adapter: Any, request: ExplainRequest, limits: Limits = NO_LIMITS) -> None:
    """A generative model's request (docs/api.md): the prompt and new-token limits, a continuation with tokens, a
    known contrast token per step, and all of it within the model's context."""
    if Capability.GENERATION not in adapter.capabilities:
        raise RequestError(f"{adapter.name} is not a generative model: 'generate' and 'contrast' do not apply",
                           "generate" if request.generate is not None else "contrast")
    prompt = adapter.count_tokens(dict(request.inputs))
    if limits.max_prompt_tokens is not None and prompt > limits.max_prompt_tokens:
        raise RequestError(f"the prompt has {prompt} tokens; the limit is {limits.max_prompt_tokens}", "inputs")
    given = request.inputs.get("continuation")
    if given is not None and request.generate is not None:
        raise RequestError("give either a continuation or generate, not both", "generate")
    if given is not None:
        new = len(adapter.continuation_ids(given))
        if new == 0:
            raise RequestError("the continuation has no tokens once tokenised", "inputs")
    else:
        new = int((request.generate or {}).get("max_new_tokens", 16))
    if limits.max_new_tokens is not None and new > limits.max_new_tokens:
        raise RequestError(f"{new} new tokens asked; the limit is {limits.max_new_tokens}",
                           "inputs" if given is not None else "generate")
    if prompt + (new if given is not None else 1) > adapter.max_tokens:
        raise RequestError(f"the prompt and continuation have {prompt + new} tokens; {adapter.name}'s context is "
                           f"{adapter.max_tokens}", "inputs")
    _check_contrast(adapter, request.contrast, new if given is not None else None)
    if (request.params.get("occlusion") or {}).get("window", 1) != 1:
        raise RequestError("occlusion on a generative model is leave-one-out: window 1", "params")
    for method, meaningless in NOT_ON_LMS.items():  # refused rather than silently ignored
        asked = request.params.get(method) or {}
        bad = [name for name in meaningless if name in asked and asked[name] != schema_default(method, name)]
        if bad:
            why = f"{method} params {bad} do not apply to generative models: {NOT_ON_LMS_WHY[method]}"
            raise RequestError(why, "params", {"params": {method: [why]}})
    layer = (request.params.get("attention") or {}).get("figure_layer")
    if layer is not None and layer not in adapter.attention_names:  # attention's own check sees classifier views only
        why = f"figure_layer {layer!r} is not one of {list(adapter.attention_names)}"
        raise RequestError(why, "params", {"params": {"attention": [why]}})


# params of the classifier versions with no meaning step by step (docs/api.md, generative models): accepted only at
# their schema's default (a stored job's request has its defaults filled in, and the worker validates it again)
NOT_ON_LMS: dict[str, tuple[str, ...]] = {
    "attention": ("generate", "show_special"),
    "attention_rollout": ("query",),
    "lime": ("stability",),
}


def schema_default(method: str, name: str) -> Any:
    """The default a method's params schema fills in for `name` (read, not repeated: it cannot drift)."""
    value = registry()[method].params().fields[name].load_default
    return value() if callable(value) else value


NOT_ON_LMS_WHY = {
    "attention": "each step reads its own row of the attention maps (give 'generate' at the top level)",
    "attention_rollout": "each step's query is the position that predicts its token",
    "lime": "no seed-stability runs step by step",
}


def _check_contrast(adapter: Any, contrast: str | Sequence[str] | None, steps: int | None) -> None:
    if contrast is None:
        return
    tokens = [contrast] if isinstance(contrast, str) else list(contrast)
    if not isinstance(contrast, str) and steps is None:
        raise RequestError("a contrast token per step needs a continuation; with generate give one token", "contrast")
    if not isinstance(contrast, str) and len(tokens) != steps:
        raise RequestError(f"contrast has {len(tokens)} tokens; the continuation has {steps}", "contrast")
    unknown = [t for t in tokens if adapter.token_id(t) is None]
    if unknown:
        raise RequestError(f"unknown contrast token(s) {unknown[:5]}: each must be one token of the vocabulary",
                           "contrast")


def validate_batch(adapter: Adapter, request: BatchRequest, limits: Limits = NO_LIMITS) -> BatchRequest:
    """`validate` for a batch: the options once, then each input, a refusal naming its position (`inputs.<i>`)."""
    checked = validate_options(adapter, request, limits)
    for position, one in enumerate(request.inputs):
        try:
            check_input(adapter, one, limits)
        except RequestError as e:
            bad = RequestError(f"input {position}: {e.detail}", "inputs")
            bad.errors = {"inputs": {str(position): [e.detail]}}  # as the schema's errors name a list's item
            raise bad from None
    return checked


def validate_options(adapter: Adapter, options: Options, limits: Limits = NO_LIMITS) -> Options:
    """`validate` without the input (an audit checks its items apart; the engine encodes them anyway)."""
    if options.score not in SCORES:
        raise RequestError(f"score must be one of {SCORES}", "score")
    if options.faithfulness not in LEVELS:
        raise RequestError(f"faithfulness must be one of {LEVELS}", "faithfulness")
    table = registry()
    methods = _known_methods(table, options.methods)
    _check_applicable(adapter, methods)
    _check_target(adapter, options.target)
    _check_layers(adapter, options.layers)
    return dataclasses.replace(options, params=_filled_params(adapter, methods, options.params, limits))


def check_input(adapter: Adapter, inputs: Mapping[str, str], limits: Limits = NO_LIMITS) -> None:
    """The adapter's own encode (tokenizer and vocabulary, no weights) is the judge, so texts that are empty once
    tokenised (e.g. only zero-width characters) are refused as the run would refuse them; then the token limit.
    (`input_length` applies encode's refusals; the HF adapter's skips building the encoding.)"""
    try:
        n_tokens = adapter.input_length(dict(inputs))
    except InputError as e:
        raise RequestError(str(e), "inputs") from None
    if limits.max_tokens is not None and n_tokens > limits.max_tokens:
        raise RequestError(f"the input has {n_tokens} tokens; the limit is {limits.max_tokens}", "inputs")


def _known_methods(table: dict[str, Method], names: Sequence[str]) -> list[Method]:
    unknown = [name for name in names if name not in table]
    if unknown:
        raise UnknownMethods(f"unknown method(s) {unknown}", "methods")
    return [table[name] for name in names]


def _check_applicable(adapter: Adapter, methods: list[Method]) -> None:
    """Every method applies to the model: the capabilities each needs, the model offers."""
    reasons = [why for why in (refusal(adapter, method) for method in methods) if why]
    if reasons:
        raise RequestError(f"{'; '.join(reasons)} (methods that apply: {applicable_methods(adapter)})", "methods")


def _check_target(adapter: Adapter, target: str) -> None:
    if adapter.labels is not None and target != "predicted" and target not in adapter.labels:
        raise RequestError(f"unknown target {target!r}; labels are {some_labels(adapter.labels)}", "target")


def _check_layers(adapter: Adapter, layers: Sequence[str] | None) -> None:
    bad = [layer for layer in layers or () if layer not in adapter.layer_names]
    if bad:
        raise RequestError(f"unknown layer(s) {bad}; {adapter.name} has {adapter.layer_names}", "layers")


def _filled_params(adapter: Adapter, methods: list[Method], given: Mapping[str, Mapping[str, Any]],
                   limits: Limits) -> dict[str, dict[str, Any]]:
    """Each method's params loaded by its schema (defaults filled) and checked; all the faults at once, per method,
    so that a caller fixes them in one go."""
    errors: dict[str, Any] = {}
    wanted = {method.name for method in methods}
    for name in given:
        if name not in wanted:
            errors[name] = [f"parameters for {name!r}, a method not requested"]
    filled = {}
    for method in methods:
        try:
            filled[method.name] = _method_params(adapter, method, dict(given.get(method.name) or {}), limits)
        except ma.ValidationError as e:
            errors[method.name] = e.messages
        except ValueError as e:  # InputError from the method's own check included
            errors[method.name] = [str(e)]
    if errors:
        raise RequestError(PARAMS_INVALID, "params", {"params": errors})
    return filled


def _method_params(adapter: Adapter, method: Method, given: dict[str, Any], limits: Limits) -> dict[str, Any]:
    params: dict[str, Any] = method.params().load(given)
    _check_finite(params, f"params.{method.name}")
    _check_work_limits(params, limits)
    if method.check is not None:  # the method's own checks against the model (layer names, patterns)
        method.check(adapter, params)
    return params


def _check_finite(values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}.{key} must be a finite number")


def _check_work_limits(values: dict[str, Any], limits: Limits) -> None:
    """``samples`` ≤ max_samples, ``steps`` ≤ max_steps."""
    for key, limit in (("samples", limits.max_samples), ("steps", limits.max_steps)):
        value = values.get(key)
        if limit is not None and isinstance(value, int) and value > limit:
            raise ValueError(f"{key} is {value}; this service allows at most {limit} (LANTERN_MAX_{key.upper()})")


def _flat(errors: Any) -> str:
    """Field errors in one line, each method's named as params.<method> (for the worker's error detail)."""
    if isinstance(errors, dict):
        return "; ".join(f"params.{name}: {messages}" for name, messages in errors.items())
    return str(errors)
