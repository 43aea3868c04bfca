"""`shap` over HTTP: GET /v1/methods lists it with its parameters, sanity and needs_head; bad parameters are a 422
problem and queue nothing."""
from __future__ import annotations

import pytest

from tests.integration.test_api import count_jobs, is_problem, job_request, queued_messages

pytestmark = pytest.mark.postgres


def test_methods_lists_shap(api):
    methods = {m["name"]: m for m in api.get("/v1/methods").get_json()["methods"]}
    shap = methods["shap"]
    assert shap["needs_head"] is True
    props = shap["params"]["properties"]
    assert {"algorithm", "unit", "max_evals", "batch_size", "stability"} <= set(props)
    assert "spearman" in shap["sanity"] and "weak" in shap["sanity"]


@pytest.mark.parametrize("params", [{"algorithm": "exact"}, {"max_evals": 1}, {"max_evals": 10**7}],
                         ids=["unknown algorithm", "max_evals too small", "max_evals too large"])
def test_bad_shap_params_are_422_and_queue_nothing(api, runtime, params):
    before_jobs, before_msgs = count_jobs(runtime, api), queued_messages(runtime)
    problem = is_problem(api.post("/v1/jobs", json=job_request(methods=["shap"], params={"shap": params})), 422)
    assert "shap" in str(problem.get("errors", {}).get("params", {}))
    assert count_jobs(runtime, api) == before_jobs and queued_messages(runtime) == before_msgs
