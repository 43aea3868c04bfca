"""The `lantern` command's contract (docs/api.md) on the embedded default."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from service.cli import _param, main


@pytest.fixture
def run(tmp_path, monkeypatch):
    for var in ("LANTERN_DATABASE_URL", "LANTERN_BROKER_URL", "LANTERN_STORAGE_URL"):
        monkeypatch.delenv(var, raising=False)

    def invoke(*args: str):
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        return result

    return invoke


def test_keys_create_list_revoke(run, tmp_path):
    data = str(tmp_path / "data")
    created = run("keys", "create", "--tenant", "acme", "--data-dir", data, "--expires", "2")
    assert created.exit_code == 0
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("lt_")
    key_id = key.split("_")[1]
    listed = run("keys", "list", "--data-dir", data)
    assert key_id in listed.output and "active" in listed.output and "acme" in listed.output
    assert run("keys", "revoke", key_id, "--data-dir", data).exit_code == 0
    assert "revoked" in run("keys", "list", "--data-dir", data).output
    missing = CliRunner().invoke(main, ["keys", "revoke", "nope", "--data-dir", data])
    assert missing.exit_code != 0 and "not found" in missing.output


def test_migrate_is_idempotent(run, tmp_path):
    data = str(tmp_path / "data")
    assert run("migrate", "--data-dir", data).exit_code == 0
    assert run("migrate", "--data-dir", data).exit_code == 0
    assert (tmp_path / "data" / "lantern.db").exists()


def test_param_parsing():
    assert _param(("smoothgrad.samples=50", "smoothgrad.noise=0.2", "gradient.aggregate=l2")) == {
        "smoothgrad": {"samples": 50, "noise": 0.2}, "gradient": {"aggregate": "l2"}}
    import click

    with pytest.raises(click.BadParameter):
        _param(("samples=50",))


def test_submit_needs_an_input(run):
    result = CliRunner().invoke(main, ["submit", "--model", "minilm-rt", "--method", "gradient"])
    assert result.exit_code == 2 and "--text" in result.output
