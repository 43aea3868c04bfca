"""docs/extending.md followed to the letter: its toy method and toy adapter (the document's own code blocks) become
the modules it names, its two registry lines are added, and an explanation runs with them through
`worker.methods.explain` and through a real job (registration, submit, `worker.runner.run_job`). Everything is
undone afterwards (monkeypatch), so other tests see the registries as they were."""
from __future__ import annotations

import io
import re
import sys
import types
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"
PNG = b"\x89PNG\r\n\x1a\n"


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def block(first_line: str) -> str:
    """The document's python code block that starts with `first_line` (the file it belongs in)."""
    for code in re.findall(r"```python\n(.*?)```", doc(), re.S):
        if code.startswith(first_line + "\n"):
            return code
    raise AssertionError(f"docs/extending.md has no python block starting with {first_line!r}")


def load_block(monkeypatch, name: str, first_line: str) -> types.ModuleType:
    """A code block of the document as the module `name` (in sys.modules until the test ends)."""
    module = types.ModuleType(name)
    module.__file__ = str(DOC)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(block(first_line), f"{DOC} ({first_line.lstrip('# ')})", "exec"), module.__dict__)
    return module


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """The document's steps: the two modules, the two registry lines, a toy bundle (its directory)."""
    from worker import capabilities, models
    from worker.models import bundle

    load_block(monkeypatch, "worker.methods.state_norm", "# worker/methods/state_norm.py")
    load_block(monkeypatch, "worker.models.toy", "# worker/models/toy.py")
    # the registry lines, read from the document's own blocks
    name, requirement = re.search(r'"(state_norm)": (requires\(.*\)),', block("# worker/capabilities.py")).groups()
    monkeypatch.setitem(capabilities.METHODS, name, eval(requirement, vars(capabilities)))
    kind, target = re.search(r'"(toy)": "([\w.]+:\w+)"', block("# worker/models/bundle.py")).groups()
    monkeypatch.setitem(bundle.ADAPTERS, kind, target)

    path = load_block(monkeypatch, "make_toy_bundle", "# make_toy_bundle.py").make_bundle(tmp_path / "toy-bow")
    yield path
    with models._cache_lock:  # forget the toy adapters loaded meanwhile, with their module
        for revision in [r for r, a in models._cache.items() if type(a).__module__ == "worker.models.toy"]:
            del models._cache[revision]


def test_toy_method_and_adapter_through_explain(toy):
    from worker.methods import applicable_methods, explain, registry
    from worker.models import InputError, load_model, model_card

    assert list(registry())[-1] == "state_norm"
    adapter = load_model(toy)
    assert type(adapter).__name__ == "ToyAdapter" and len(adapter.revision) == 64
    card = model_card(toy)
    assert card["layers"] == ["embeddings", "pool", "output"] and card["kind"] == "toy"
    assert card["capabilities"] == ["embedding_table", "head"]
    # the methods the document says apply to the toy, and only those
    assert set(applicable_methods(adapter)) == {
        "gradient", "smoothgrad", "grad_x_input", "integrated_gradients", "occlusion", "perturbation", "lime",
        "shap", "sigma", "activations", "state_norm"}

    text = {"text": "A good film."}
    ex = explain(adapter, text, ["state_norm", "grad_x_input", "occlusion", "sigma"],
                 params={"sigma": {"max_steps": 20, "eval_samples": 16, "concepts": {"praise": ["good", "fine"]}}})
    result = ex.result
    assert result["tokens"] == ["a", "good", "film", "."]
    assert result["prediction"]["label"] == "positive" and result["target"] == "positive"
    part = result["methods"]["state_norm"]
    embeddings = adapter.embed(adapter.encode(text))[0]
    assert torch.allclose(torch.tensor(part["scores"]), embeddings.norm(dim=-1))
    assert part["layer"] == "embeddings" and part["params"] == {"layer": "embeddings"}
    assert part["word_scores"] == part["scores"]  # one token per word
    assert set(part["faithfulness"]) >= {"comprehensiveness", "sufficiency", "random", "lift"}
    assert set(ex.tensors["state_norm"]) == {"scores"} and ex.figures["state_norm.png"][:8] == PNG
    # the other methods run on the toy adapter: "good" carries the decision
    assert max(range(4), key=result["methods"]["grad_x_input"]["scores"].__getitem__) == 1
    assert max(range(4), key=result["methods"]["occlusion"]["scores"].__getitem__) == 1
    assert list(result["methods"]["sigma"]["layers"]) == ["embeddings"]
    assert len(result["methods"]["sigma"]["layers"]["embeddings"]["r"]["praise"]) == 4  # concepts: its table

    # a method whose requirement the toy does not meet is refused, naming the capability
    with pytest.raises(InputError, match="needs lrp_rules"):
        explain(adapter, text, ["lrp"])

    # the check hook refuses a layer that is not per token, before any work
    with pytest.raises(InputError, match="per-token layer"):
        explain(adapter, text, ["state_norm"], params={"state_norm": {"layer": "pool"}})
    with pytest.raises(InputError, match="one text"):
        adapter.encode({"premise": "a", "hypothesis": "b"})


@pytest.mark.parametrize("backend", ["sqlite"])  # the embedded stack: no server needed
def test_toy_job_runs_through_the_service(toy, api, runtime):
    from safetensors.torch import load

    from worker.runner import run_job

    files = [(io.BytesIO(p.read_bytes()), p.name) for p in sorted(toy.iterdir())]
    registered = api.post("/v1/models", data={"name": "toy-bow", "files": files},
                          content_type="multipart/form-data")
    assert registered.status_code == 201, registered.get_json()
    assert "state_norm" in registered.get_json()["methods"]
    listed = {m["name"]: m for m in api.get("/v1/methods").get_json()["methods"]}
    assert listed["state_norm"]["params"]["properties"]["layer"]["default"] == "embeddings"

    request = {"model": "toy-bow", "inputs": {"text": "A dull film."}, "methods": ["state_norm", "gradient"]}
    refused = api.post("/v1/jobs", json={**request, "params": {"state_norm": {"layer": "output"}}})
    assert refused.status_code == 422 and "state_norm" in refused.get_json()["errors"]["params"]

    job = api.post("/v1/jobs", json=request)
    assert job.status_code == 202, job.get_json()
    job_id = job.get_json()["id"]
    assert run_job(runtime, job_id, "w1") == "succeeded"
    done = api.get(f"/v1/jobs/{job_id}").get_json()
    assert done["status"] == "succeeded" and done["model"]["revision"] == registered.get_json()["revision"]
    result = done["result"]
    assert result["prediction"]["label"] == "negative"
    assert len(result["methods"]["state_norm"]["scores"]) == len(result["tokens"]) == 4
    names = {a["name"] for a in done["artifacts"]}
    assert {"state_norm.png", "state_norm.safetensors", "gradient.png", "gradient.safetensors",
            "result.json"} <= names
    tensors = load(api.get(f"/v1/jobs/{job_id}/artifacts/state_norm.safetensors").data)
    assert torch.allclose(tensors["scores"], torch.tensor(result["methods"]["state_norm"]["scores"]))
