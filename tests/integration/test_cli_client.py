"""The CLI's client commands as a user runs them (real processes against `lantern up`): full ids and unique
prefixes, --json documents, follow, download, cancel, audits; every error one line on stderr with its documented
exit code; bad settings and unknown variables; a missing extra named instead of a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from service.cli import FAILED, NOT_FOUND, UNREACHABLE, USAGE, Failure, resolve
from service.client import Client
from tests.helpers import LANTERN, embedded_stack, free_port

TEXT = "A gripping, beautifully acted film."


def lantern(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LANTERN_")}
    return subprocess.run(LANTERN + list(args), env={**base, "HF_HUB_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(run: subprocess.CompletedProcess, code: int) -> str:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr and run.stderr.startswith("Error: ")
    return run.stderr


# --- without a server ----------------------------------------------------------------------------------------

def test_version_and_help_name_the_exit_codes():
    assert lantern("--version").stdout.startswith("lantern, version ")
    helptext = lantern("--help").stdout
    assert "Exit codes:" in helptext and "5  the server is unreachable" in helptext
    assert "_LANTERN_COMPLETE=bash_source" in helptext


def test_server_unreachable_is_one_line_and_exit_5():
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["models", "list"], ["jobs", "list", "--json"], ["jobs", "get", "abc"], ["methods", "list"]):
        err = one_line_error(lantern("--url", url, *args, env={"LANTERN_API_KEY": "lt_x_y"}), UNREACHABLE)
        assert url in err and "cannot reach" in err


def test_a_bad_setting_names_the_variable_the_value_and_what_is_expected(tmp_path):
    run = lantern("migrate", "--data-dir", str(tmp_path), env={"LANTERN_MAX_TOKENS": "abc"})
    err = one_line_error(run, USAGE)
    assert "LANTERN_MAX_TOKENS='abc'" in err and "whole number" in err
    err = one_line_error(lantern("migrate", "--data-dir", str(tmp_path), env={"LANTERN_LOG_JSON": "maybe"}), USAGE)
    assert "LANTERN_LOG_JSON='maybe'" in err and "true or false" in err
    for variable, value, expected in (("LANTERN_MAX_TOKENS", "-5", "LANTERN_MAX_TOKENS=-5: expected 0 or more"),
                                      ("LANTERN_RETAIN_JOBS_DAYS", "nan", "'nan': expected a finite number")):
        run = lantern("migrate", "--data-dir", str(tmp_path), env={variable: value})
        assert expected in one_line_error(run, USAGE)
    crossed = lantern("migrate", "--data-dir", str(tmp_path), env={"LANTERN_HARD_TIME_LIMIT": "4000"})
    assert "LANTERN_VISIBILITY_TIMEOUT=3600 must exceed LANTERN_HARD_TIME_LIMIT=4000" in one_line_error(crossed, USAGE)


def test_an_unknown_variable_is_warned_about_once_with_a_suggestion(tmp_path):
    run = lantern("migrate", "--data-dir", str(tmp_path), env={"LANTERN_MAX_TOKEN": "64", "LANTERN_COLOUR": "red"})
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "unknown setting" in line]
    assert warnings == ["unknown setting LANTERN_COLOUR is ignored",
                        "unknown setting LANTERN_MAX_TOKEN is ignored (did you mean LANTERN_MAX_TOKENS?)"]


def test_a_server_verb_without_its_extra_names_the_extra(tmp_path):
    hide = "import sys; sys.modules.update(sqlalchemy=None, alembic=None, flask=None, torch=None); "
    for verb, extra in (("migrate", "server"), ("up", "all"), ("worker", "all")):
        call = f"from service.cli import main; main([{verb!r}], prog_name='lantern')"
        run = subprocess.run([sys.executable, "-c", hide + call],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "LANTERN_DATA_DIR": str(tmp_path)})
        err = one_line_error(run, USAGE)
        assert f"pip install 'lantern[{extra}]'" in err and f"`lantern {verb}`" in err


def test_a_prefix_resolves_to_one_id_or_fails_in_one_line():
    docs = [SimpleNamespace(id=i) for i in ("ab12-0000", "ab34-0000", "cd56-0000")]
    assert resolve("job", "cd", lambda: docs) == "cd56-0000"
    assert resolve("job", "AB3", lambda: docs) == "ab34-0000"
    with pytest.raises(Failure) as e:
        resolve("job", "ab", lambda: docs)
    assert e.value.exit_code == USAGE and "2 jobs have ids starting 'ab'" in e.value.message
    for missing in ("ef", "not-hex!"):
        with pytest.raises(Failure) as e:
            resolve("job", missing, lambda: docs)
        assert e.value.exit_code == NOT_FOUND


# --- against the embedded stack ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with embedded_stack(tmp_path_factory.mktemp("embedded")) as st:
        st.env = {"LANTERN_URL": st.url, "LANTERN_API_KEY": st.key}
        yield st


@pytest.mark.e2e
@pytest.mark.slow
def test_submit_follow_get_download_by_prefix(stack, tmp_path):
    run = lantern("submit", "--model", "minilm-rt", "--text", TEXT, "--method", "gradient", "--wait", "--json",
                  env=stack.env)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)  # one JSON document on stdout, nothing else
    assert job["status"] == "succeeded" and len(job["id"]) == 36
    listed = lantern("jobs", "list", env=stack.env)
    assert listed.stdout.split()[0] == job["id"]
    prefix = job["id"][:8]
    shown = lantern("jobs", "get", prefix, "--follow", env=stack.env)
    assert shown.returncode == 0 and f"job {job['id']}: succeeded" in shown.stdout and "prediction:" in shown.stdout
    as_json = json.loads(lantern("jobs", "get", prefix, "--json", env=stack.env).stdout)
    assert as_json["result"]["tokens"] == job["result"]["tokens"]

    got = lantern("jobs", "download", prefix, "gradient.png", "--out", str(tmp_path / "one"), env=stack.env)
    assert got.returncode == 0 and (tmp_path / "one" / "gradient.png").read_bytes()[:4] == b"\x89PNG"
    every = lantern("jobs", "download", prefix, "--out", str(tmp_path / "all"), env=stack.env)
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(a["name"] for a in job["artifacts"])
    assert every.stdout.count("saved ") == len(job["artifacts"])
    err = one_line_error(lantern("jobs", "download", prefix, "nope.png", "--out", str(tmp_path), env=stack.env),
                         NOT_FOUND)
    assert "nope.png" in err and "gradient.png" in err

    for args in (["jobs", "list", "--json", "--limit", "1"], ["methods", "list", "--json"],
                 ["models", "list", "--json"]):
        doc = json.loads(lantern(*args, env=stack.env).stdout)
        assert isinstance(doc, dict) and doc
    assert "gradient" in lantern("methods", "list", env=stack.env).stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_cancel_by_prefix_and_the_api_s_errors(stack):
    run = lantern("submit", "--model", "minilm-rt", "--text", TEXT, "--method", "smoothgrad",
                  "--param", "smoothgrad.samples=5000", "--json", env=stack.env)
    job_id = json.loads(run.stdout)["id"]
    cancelled = lantern("jobs", "cancel", job_id[:10], env=stack.env)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"job {job_id}: ")
    followed = lantern("jobs", "get", job_id, "--follow", env=stack.env)
    assert followed.returncode == FAILED and "cancelled" in followed.stdout  # a cancelled job is exit 1
    assert "409" in one_line_error(lantern("jobs", "cancel", job_id, env=stack.env), FAILED)

    bad = lantern("submit", "--model", "minilm-rt", "--text", TEXT, "--method", "gradient",
                  "--param", "gradient.nope=1", env=stack.env)
    assert "params.gradient" in one_line_error(bad, USAGE)  # the field is named
    missing = "00000000-0000-4000-8000-000000000000"
    assert "404" in one_line_error(lantern("jobs", "get", missing, env=stack.env), NOT_FOUND)
    assert "no job with an id starting" in one_line_error(lantern("jobs", "get", "ffffffffff", env=stack.env),
                                                          NOT_FOUND)
    unauthorised = lantern("models", "list", env={**stack.env, "LANTERN_API_KEY": "lt_nope_nope"})
    assert "401" in one_line_error(unauthorised, 4)
    assert "401" in one_line_error(lantern("--api-key", "lt_a_b", "jobs", "list", env=stack.env), 4)


@pytest.mark.e2e
@pytest.mark.slow
def test_an_audit_followed_listed_and_downloaded(stack, tmp_path):
    corpus = tmp_path / "reviews.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in
                                [(TEXT, "positive"), ("Dull and far too long.", "negative")]) + "\n")
    run = lantern("audit", str(corpus), "--model", "minilm-rt", "--method", "gradient", "--follow", "--json",
                  env=stack.env)
    doc = json.loads(run.stdout)
    assert doc["counts"]["total"] == 2 and doc["status"] in ("succeeded", "failed"), run.stderr
    assert lantern("audits", "list", env=stack.env).stdout.split()[0] == doc["id"]
    got = lantern("audits", "get", doc["id"][:8], "--json", env=stack.env)
    assert json.loads(got.stdout)["id"] == doc["id"]
    if doc["status"] == "succeeded":
        saved = lantern("audits", "download", doc["id"][:8], "summary.json", "--out", str(tmp_path / "r"),
                        env=stack.env)
        assert saved.returncode == 0 and json.loads((tmp_path / "r" / "summary.json").read_text())["id"] == doc["id"]
    assert "409" in one_line_error(lantern("audits", "cancel", doc["id"], env=stack.env), FAILED)


# --- the faithfulness level (docs/api.md): --faithfulness of submit and audit, the client's faithfulness= ---

def test_an_unknown_faithfulness_level_is_a_usage_error_before_any_request():
    run = lantern("--url", "http://127.0.0.1:9", "submit", "--model", "minilm-rt", "--text", TEXT, "--method",
                  "gradient", "--faithfulness", "most")
    assert run.returncode == 2 and "'most' is not one of 'full', 'basic', 'none'" in run.stderr  # click's usage exit
    assert "unreachable" not in run.stderr.lower()


@pytest.mark.e2e
@pytest.mark.slow
def test_submit_and_audit_take_the_faithfulness_level(stack, tmp_path):
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
