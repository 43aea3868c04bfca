"""The typed request and its one validation (worker/methods/request.py): what `validate` refuses, with the field
at fault; defaults filled; the request frozen; its JSON row round-tripped."""
from __future__ import annotations

import dataclasses

import pytest

from worker.methods import (
    ExplainOptions,
    ExplainRequest,
    Limits,
    RequestError,
    UnknownMethods,
    check_methods,
    explain,
    explain_request,
    registry,
    validate,
    validate_options,
)
from worker.methods.aopc_bounds import CACHE
from worker.models.base import InputError

TEXT = "A gripping, beautifully acted film."


def request(**over) -> ExplainRequest:
    return ExplainRequest.from_document({"inputs": {"text": TEXT}, "methods": ["gradient"], **over})


REFUSED = [
    ("unknown method", request(methods=["gradient", "astrology"]), "methods", "unknown method"),
    ("method that does not apply (gating: ESIM only)", request(methods=["gating"]), "methods", "does not apply"),
    ("unknown score", request(score="odds"), "score", "score must be one of"),
    ("unknown faithfulness level", request(faithfulness="some"), "faithfulness", "faithfulness must be one of"),
    ("unknown target", request(target="sarcastic"), "target", "unknown target"),
    ("unknown layer", request(layers=["layer.99"]), "layers", "unknown layer"),
    ("params of a method not asked", request(params={"smoothgrad": {}}), "params", "not requested"),
    ("out-of-range param", request(methods=["smoothgrad"], params={"smoothgrad": {"samples": -1}}), "params",
     "params.smoothgrad"),
    ("unknown param", request(params={"gradient": {"colour": 1}}), "params", "colour"),
    ("non-finite param", request(methods=["smoothgrad"], params={"smoothgrad": {"noise": float("nan")}}),
     "params", "not permitted"),
    ("the method's own check (a regex RE2 cannot run)",
     request(methods=["activations"], params={"activations": {"rank_by": "correlation",
                                                              "pattern_regex": r"(a)\1"}}), "params", "RE2"),
    ("blank text", request(inputs={"text": "   "}), "inputs", "empty"),
    ("zero-width text", request(inputs={"text": "\u200b\u200b"}), "inputs", "token"),
    ("text over the model's limit", request(inputs={"text": "good " * 600}), "inputs", "tokens"),
]


@pytest.mark.parametrize("name,bad,field,words", REFUSED, ids=[r[0] for r in REFUSED])
def test_each_refusal_names_its_field(minilm_rt, name, bad, field, words):
    with pytest.raises(RequestError, match=words) as err:
        validate(minilm_rt, bad)
    assert isinstance(err.value, InputError)  # the worker's "cannot explain this input": final, a 422
    assert err.value.field == field and field in err.value.errors
    if field != "params":
        assert err.value.errors == {field: [err.value.detail]} and str(err.value) == err.value.detail


def test_unknown_methods_are_their_own_kind(minilm_rt):
    with pytest.raises(UnknownMethods, match="astrology"):
        validate(minilm_rt, request(methods=["astrology"]))


def test_every_faulty_method_params_are_reported_at_once(minilm_rt):
    bad = request(methods=["smoothgrad", "lime"], params={"smoothgrad": {"samples": 0}, "lime": {"samples": 1},
                                                          "occlusion": {}})
    with pytest.raises(RequestError) as err:
        validate(minilm_rt, bad)
    assert set(err.value.errors["params"]) == {"smoothgrad", "lime", "occlusion"}
    assert err.value.detail == "some method parameters are invalid"
    assert "params.smoothgrad" in str(err.value) and "params.lime" in str(err.value)


def test_the_headless_model_refuses_head_methods_but_takes_no_method(minilm):
    with pytest.raises(RequestError, match="output head") as err:
        validate(minilm, request(methods=["gradient"]))
    assert err.value.field == "methods" and "methods that apply" in err.value.detail
    assert validate(minilm, request(methods=[], target="anything")).methods == ()  # no head: no target to check


@pytest.mark.parametrize("limits,bad,words", [
    (Limits(max_samples=100), request(methods=["lime"], params={"lime": {"samples": 300}}), "LANTERN_MAX_SAMPLES"),
    (Limits(max_steps=10), request(methods=["integrated_gradients"], params={"integrated_gradients": {"steps": 64}}),
     "LANTERN_MAX_STEPS"),
    (Limits(max_tokens=5), request(), "the limit is 5"),
], ids=["samples", "steps", "tokens"])
def test_the_service_limits_hold_and_none_means_no_limit(minilm_rt, limits, bad, words):
    with pytest.raises(RequestError, match=words):
        validate(minilm_rt, bad, limits)
    validate(minilm_rt, bad)  # no limits given: the method's own ranges only
    validate(minilm_rt, bad, Limits(max_tokens=None, max_samples=None, max_steps=None))


def test_defaults_are_filled_from_each_method_schema(minilm_rt):
    table = registry()
    checked = validate(minilm_rt, request(methods=["smoothgrad", "gradient"], params={"smoothgrad": {"samples": 4}}))
    assert checked.params["smoothgrad"] == {**table["smoothgrad"].params().load({}), "samples": 4}
    assert checked.params["gradient"] == table["gradient"].params().load({})
    assert checked.inputs == {"text": TEXT} and checked.methods == ("smoothgrad", "gradient")
    assert validate(minilm_rt, checked) == checked  # a validated request (as a row holds it) validates as itself


def test_validate_options_leaves_the_input_to_its_caller(minilm_rt):
    blank = request(inputs={"text": "   "}, methods=["smoothgrad"])
    assert isinstance(validate_options(minilm_rt, blank), ExplainRequest)  # the same type back
    options = ExplainOptions.from_document({"methods": ["smoothgrad"], "models": ["minilm-rt"], "corpus": {}})
    assert validate_options(minilm_rt, options).params["smoothgrad"]["samples"] == 25
    with pytest.raises(RequestError, match="empty"):
        validate(minilm_rt, blank)


def test_a_request_is_frozen():
    req = request(params={"gradient": {}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.methods = ("lime",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        req.params["lime"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        req.params["gradient"]["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        req.inputs["text"] = "other"  # type: ignore[index]
    assert isinstance(req.methods, tuple)


def test_the_row_round_trips_with_todays_keys():
    row = {"model": "minilm-rt", "compare_with": [], "inputs": {"text": TEXT}, "methods": ["gradient", "lime"],
           "layers": ["layer.1"], "target": "positive", "score": "probability",
           "params": {"lime": {"samples": 100, "unit": "word"}}, "seed": 7, "compare_revisions": {}}
    req = ExplainRequest.from_document(row)
    doc = req.document()
    assert doc == {k: v for k, v in row.items() if k not in ("model", "compare_with", "compare_revisions")}
    assert ExplainRequest.from_document(doc) == req
    doc["params"]["lime"]["samples"] = 5  # the document is the caller's own copy
    assert req.params["lime"]["samples"] == 100
    assert set(ExplainOptions.from_document(row).document()) == {"methods", "layers", "target", "score", "params",
                                                                 "seed"}


def test_a_short_request_takes_the_api_defaults():
    req = ExplainRequest.from_document({"inputs": {"text": TEXT}, "methods": ["gradient"]})
    assert (req.layers, req.target, req.score, dict(req.params), req.seed) == (None, "predicted", "logit", {}, 0)
    assert req.faithfulness == "full"  # a row stored before the option existed runs as it always ran


def test_the_faithfulness_level_round_trips_and_full_is_left_unsaid():
    for level in ("basic", "none"):
        req = request(faithfulness=level)
        assert req.document()["faithfulness"] == level
        assert ExplainRequest.from_document(req.document()) == req
        assert ExplainOptions.from_document({"methods": ["gradient"], "faithfulness": level}).document() == {
            "methods": ["gradient"], "layers": None, "target": "predicted", "score": "logit", "params": {},
            "seed": 0, "faithfulness": level}
    said, unsaid = request(faithfulness="full"), request()
    assert said == unsaid and said.document() == unsaid.document()  # one request, one row
    assert "faithfulness" not in unsaid.document()  # today's rows, bit for bit
    assert request(faithfulness="basic") != unsaid


def test_explain_request_equals_explain(minilm_rt):
    def timeless(methods: dict) -> dict:  # `seconds` is how long the run took, not a result
        return {name: {k: v for k, v in part.items() if k != "seconds"} for name, part in methods.items()}

    def searched(run):  # each from no cached bounds: a search run beside the variants or not rounds apart (~1e-9)
        CACHE.items.clear()
        return timeless(run().result["methods"])

    for level in ("full", "basic", "none"):
        req = request(methods=["gradient"], target="negative", seed=3, faithfulness=level)
        assert searched(lambda req=req: explain_request(minilm_rt, req, figures=False)) == searched(
            lambda level=level: explain(minilm_rt, {"text": TEXT}, ["gradient"], target="negative", seed=3,
                                        figures=False, faithfulness=level))


def test_check_methods_is_validate_options(minilm_rt):
    assert check_methods(minilm_rt, registry(), ["smoothgrad"], "logit", {}) == \
        validate_options(minilm_rt, ExplainOptions(methods=["smoothgrad"])).plain_params()


def test_the_faithfulness_levels_are_the_same_everywhere():
    """The engine's levels, the API's OneOf and the light client's Literal (which must not import the engine)."""
    from service.api.schemas import FAITHFULNESS
    from service.client import FAITHFULNESS_LEVELS
    from worker.methods.faithfulness import LEVELS

    assert LEVELS == FAITHFULNESS == FAITHFULNESS_LEVELS and LEVELS[0] == "full"
