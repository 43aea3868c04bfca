"""`pip install lantern` without extras: the wheel built from this tree, installed in a fresh virtualenv with only
its base dependencies (from the package index, pinned by requirements.lock), imports no engine or server, and its
client and CLI talk to a running embedded stack; the server verbs name the extra they need."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import embedded_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "numpy", "flask", "sqlalchemy", "celery", "kombu", "worker", "service.db")


def _run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    run = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("LANTERN_")}, **(env or {})})
    return run


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """The bare virtualenv's bin/ folder."""
    tmp = tmp_path_factory.mktemp("bare")
    src = tmp / "src"  # a copy: building in the shared tree would leave build/ folders there
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("service", "worker", "migrations"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
                 src)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("lantern-*.whl"))
    made = _run(sys.executable, "-m", "venv", tmp / "venv")  # from the base interpreter: nothing of .venv inside
    assert made.returncode == 0, made.stderr
    installed = _run(tmp / "venv" / "bin" / "pip", "install", "-q", "-c", ROOT / "requirements.lock", wheel)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return tmp / "venv" / "bin"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with embedded_stack(tmp_path_factory.mktemp("embedded")) as st:  # run by the full install (.venv)
        yield st


def test_the_bare_install_has_the_base_dependencies_only(bare):
    listed = json.loads(_run(bare / "pip", "list", "--format", "json").stdout)
    names = {p["name"].lower() for p in listed} - {"pip", "setuptools", "lantern"}
    assert names == {"click", "requests", "urllib3", "certifi", "charset-normalizer", "idna"}, listed


def test_importing_the_client_imports_no_engine_and_no_server(bare):
    probe = f"import sys, service.client, service.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    run = _run(bare / "python", "-c", probe)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


def test_version_and_the_server_verbs_name_their_extra(bare, tmp_path):
    assert _run(bare / "lantern", "--version").stdout.startswith("lantern, version ")
    for args, extra in ((["migrate"], "server"), (["keys", "list"], "server"), (["up"], "all"),
                        (["serve"], "all"), (["worker"], "all"), (["demo"], "all"), (["zoo", "train", "cnn-rt"], "worker")):
        run = _run(bare / "lantern", *args, env={"LANTERN_DATA_DIR": str(tmp_path)})
        assert run.returncode == 2 and run.stdout == "", (args, run.stdout, run.stderr)
        assert run.stderr.count("\n") == 1 and f"pip install 'lantern[{extra}]'" in run.stderr, run.stderr


def test_the_bare_client_and_cli_talk_to_a_running_stack(bare, stack, tmp_path):
    script = f"""
import json, sys
from service.client import Client
c = Client({stack.url!r}, {stack.key!r})
job = c.wait(c.submit({{"model": "minilm-rt", "inputs": {{"text": "A fine film."}}, "methods": ["gradient"]}}),
             timeout=240)
path = c.download(job, "gradient.png", {str(tmp_path)!r})
print(json.dumps({{"id": job.id, "status": job.status, "png": path.read_bytes()[:4].hex(),
                  "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    run = _run(bare / "python", "-c", script, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["status"] == "succeeded" and out["png"] == "89504e47" and out["heavy"] == []
    env = {"LANTERN_URL": stack.url, "LANTERN_API_KEY": stack.key}
    shown = _run(bare / "lantern", "jobs", "get", out["id"][:8], "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == out["id"], shown.stderr
    assert "prediction: positive" in _run(bare / "lantern", "jobs", "get", out["id"], env=env).stdout
