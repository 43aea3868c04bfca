"""Adapter capabilities and method requirements: every zoo adapter declares what it offers, the methods that apply
to each zoo model are the ones that applied before capabilities replaced the class checks, and a method whose
requirement a model does not meet is refused at submit with a 422 that names the missing capability."""
from __future__ import annotations

import pytest

from worker.capabilities import GENERATION_METHODS, METHODS, Capability, applicable

EVERY_METHOD = list(METHODS)
# the methods that did NOT apply to each zoo model under the class checks (computed from the code before
# capabilities), less lrp where the LSTM and Transformer rules came later
NOT_APPLICABLE = {
    "all-minilm-l6-v2": ["gradient", "smoothgrad", "grad_x_input", "integrated_gradients", "occlusion",
                         "perturbation", "lime", "shap", "lrp", "attention_saliency", "gating"],
    "bilstm-rt": ["attention", "attention_saliency", "gating", "attention_rollout"],
    "cnn-rt": ["attention", "attention_saliency", "gating", "attention_rollout"],
    "esim-300": ["attention_rollout"],
    "esim-50": ["attention_rollout"],
    "lstm-lm-rt": ["attention_saliency", "gating", "attention_rollout"],
    "minilm-rt": ["attention_saliency", "gating"],
    "reverse-seq2seq": ["gradient", "smoothgrad", "grad_x_input", "integrated_gradients", "occlusion",
                        "perturbation", "lime", "shap", "lrp", "attention", "attention_saliency", "gating",
                        "attention_rollout"],
    "transformer-rt": ["attention_saliency", "gating"],
    # generative models: only the step-by-step methods (worker.capabilities.GENERATION_METHODS)
    "gpt2-rt": [m for m in EVERY_METHOD if m not in GENERATION_METHODS],
    "llama-rt": [m for m in EVERY_METHOD if m not in GENERATION_METHODS],
}
CAPABILITIES = {
    "all-minilm-l6-v2": {"self_attention", "embedding_table"},
    "bilstm-rt": {"head", "embedding_table", "lrp_rules"},
    "cnn-rt": {"head", "embedding_table", "lrp_rules"},
    "esim-300": {"head", "embedding_table", "pair_alignment", "lstm_gates", "lrp_rules"},
    "esim-50": {"head", "embedding_table", "pair_alignment", "lstm_gates", "lrp_rules"},
    "lstm-lm-rt": {"head", "embedding_table", "next_word", "sequence_output", "lrp_rules"},
    "minilm-rt": {"head", "embedding_table", "self_attention", "lrp_rules"},
    "reverse-seq2seq": {"embedding_table", "sequence_output"},
    "transformer-rt": {"head", "embedding_table", "self_attention", "lrp_rules"},
    "gpt2-rt": {"head", "embedding_table", "self_attention", "sequence_output", "generation"},
    "llama-rt": {"head", "embedding_table", "self_attention", "sequence_output", "generation"},
}


@pytest.fixture(scope="module")
def zoo():
    from worker.models import load_model, zoo_names

    assert set(zoo_names()) == set(NOT_APPLICABLE)
    return {name: load_model(name, device="cpu") for name in NOT_APPLICABLE}


def test_every_zoo_adapter_declares_its_capabilities(zoo):
    for name, adapter in zoo.items():
        assert adapter.capabilities == CAPABILITIES[name], name
        assert adapter.describe()["capabilities"] == sorted(CAPABILITIES[name]), name


def test_the_methods_that_apply_are_unchanged(zoo):
    from worker.methods import applicable_methods

    for name, adapter in zoo.items():
        expected = [m for m in EVERY_METHOD if m not in NOT_APPLICABLE[name]]
        assert applicable_methods(adapter) == expected, name
        assert adapter.describe()["methods"] == expected, name


def test_the_registry_is_the_requirement_table():
    from worker.methods import registry

    table = registry()
    assert list(table) == EVERY_METHOD
    for name, method in table.items():
        assert method.requires is METHODS[name]
        assert method.needs_head == (Capability.HEAD in METHODS[name].all_of)


def test_attention_has_a_view_per_capability_it_accepts():
    from worker.methods.attention import VIEWS

    assert list(VIEWS) == list(METHODS["attention"].any_of)


def test_requirements_name_what_is_missing():
    assert METHODS["lrp"].missing({Capability.HEAD}) == ["lrp_rules"]
    assert METHODS["gating"].missing(set()) == ["head", "lstm_gates", "pair_alignment"]
    assert METHODS["attention"].missing({Capability.HEAD}) == ["one of pair_alignment, next_word, self_attention"]
    assert "attention" in applicable({Capability.NEXT_WORD}) and "gradient" not in applicable({Capability.NEXT_WORD})


def test_a_method_refuses_an_adapter_without_its_capability(zoo):
    from worker.methods import explain
    from worker.models import InputError

    with pytest.raises(InputError, match="does not apply to minilm-rt: it needs lstm_gates, pair_alignment"):
        explain(zoo["minilm-rt"], {"text": "a fine film"}, ["gating"])
    with pytest.raises(InputError, match="needs head"):
        explain(zoo["all-minilm-l6-v2"], {"text": "a fine film"}, ["gradient"])


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("model,method,missing", [
    ("reverse-seq2seq", "lrp", "head (a model with an output head), lrp_rules"),
    ("cnn-rt", "gating", "lstm_gates"),
    ("bilstm-rt", "attention", "one of pair_alignment, next_word, self_attention"),
    ("all-minilm-l6-v2", "gradient", "head"),
])
def test_submit_refuses_a_missing_capability(api, model, method, missing):
    response = api.post("/v1/jobs", json={"model": model, "inputs": {"text": "a fine film"}, "methods": [method]})
    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert f"needs {missing}" in problem["detail"] and "methods" in problem["errors"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_methods_list_their_requirements(api):
    listed = {m["name"]: m for m in api.get("/v1/methods").get_json()["methods"]}
    assert list(listed) == EVERY_METHOD
    assert listed["lrp"]["requires"] == ["head", "lrp_rules"] and listed["lrp"]["needs_head"] is True
    assert listed["attention"]["requires"] == [] and listed["attention"]["needs_head"] is False
    assert listed["attention"]["requires_one_of"] == ["pair_alignment", "next_word", "self_attention"]
    assert listed["sigma"]["requires"] == [] and listed["sigma"]["requires_one_of"] == []
