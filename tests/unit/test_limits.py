"""Work limits from configuration are enforced at submit time (docs/api.md): samples and steps."""
from __future__ import annotations

import pytest

from service.config import Settings
from service.errors import Problem
from service.validation import check_request


def request(method, params):
    return {"model": "minilm-rt", "inputs": {"text": "a fine film ."}, "methods": [method], "target": "predicted",
            "params": {method: params}}


@pytest.mark.parametrize(("method", "params"), [("lime", {"samples": 300}), ("integrated_gradients", {"steps": 64})])
def test_samples_and_steps_are_capped_by_configuration(minilm_rt, method, params):
    settings = Settings(max_samples=200, max_steps=50)
    with pytest.raises(Problem) as err:
        check_request(minilm_rt, request(method, params), settings)
    assert "LANTERN_MAX_" in str(err.value.errors)
    loose = Settings(max_samples=1000, max_steps=100)
    assert check_request(minilm_rt, request(method, params), loose)["params"][method][next(iter(params))] == \
        next(iter(params.values()))
