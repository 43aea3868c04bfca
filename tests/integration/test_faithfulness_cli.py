"""`--faithfulness` of the CLI's `submit` and `audit` and the client's `faithfulness=` (docs/api.md), as a user runs
them against `lantern up` in real processes; a level the CLI does not know is a usage error before any request."""
from __future__ import annotations

import json

import pytest

from service.client import Client
from tests.helpers import embedded_stack
from tests.integration.test_cli_client import lantern

TEXT = "A gripping, beautifully acted film."


def test_an_unknown_level_is_a_usage_error_before_any_request():
    run = lantern("--url", "http://127.0.0.1:9", "submit", "--model", "minilm-rt", "--text", TEXT, "--method",
                  "gradient", "--faithfulness", "most")
    assert run.returncode == 2 and "'most' is not one of 'full', 'basic', 'none'" in run.stderr  # click's usage exit
    assert "unreachable" not in run.stderr.lower()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with embedded_stack(tmp_path_factory.mktemp("embedded")) as st:
        st.env = {"LANTERN_URL": st.url, "LANTERN_API_KEY": st.key}
        yield st


@pytest.mark.e2e
@pytest.mark.slow
def test_submit_and_audit_take_the_level(stack, tmp_path):
    run = lantern("submit", "--model", "minilm-rt", "--text", TEXT, "--method", "gradient", "--faithfulness", "none",
                  "--wait", "--json", env=stack.env)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["request"]["faithfulness"] == "none" and "faithfulness" not in job["result"]["methods"]["gradient"]

    client = Client(stack.url, stack.key)
    basic = client.wait(client.submit({"model": "minilm-rt", "inputs": {"text": TEXT}, "methods": ["gradient"]},
                                      faithfulness="basic"), timeout=240)
    faith = basic.result["methods"]["gradient"]["faithfulness"]
    assert basic.request["faithfulness"] == "basic" and faith["normalized"] is None and "lift" in faith

    corpus = tmp_path / "reviews.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in (TEXT, "Dull and far too long.")) + "\n")
    run = lantern("audit", str(corpus), "--model", "minilm-rt", "--method", "gradient", "--faithfulness", "none",
                  "--follow", "--json", env=stack.env)
    doc = json.loads(run.stdout)
    assert doc["status"] == "succeeded" and doc["request"]["faithfulness"] == "none", run.stderr
    assert "faithfulness" not in doc["aggregates"]["models"]["minilm-rt"]["methods"]["gradient"]
    started = client.audit({"model": "minilm-rt", "methods": ["gradient"], "corpus": {"items": [{"text": TEXT}]}},
                           faithfulness="basic")
    assert started.request["faithfulness"] == "basic"
