"""Bundle rules: what is refused, what the revision covers, how load_model resolves and caches."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from worker.models import (
    InputError,
    bundle_dir,
    bundle_revision,
    load_model,
    model_card,
    validate_bundle,
    zoo_names,
)


@pytest.fixture
def plain_dir(tmp_path, tiny_classifier_dir) -> Path:
    """A writable copy of the tiny HF classifier directory."""
    target = tmp_path / "plain"
    shutil.copytree(tiny_classifier_dir, target)
    return target


@pytest.fixture
def lantern_dir(tmp_path) -> Path:
    """A writable copy of the minilm-rt bundle (encoder by package reference)."""
    target = tmp_path / "rt"
    shutil.copytree(bundle_dir("minilm-rt"), target)
    return target


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "weights.pkl", "model.pth", "ckpt/x.ckpt"])
@pytest.mark.parametrize("kind", ["plain_dir", "lantern_dir"])
def test_pickle_weights_are_refused(kind, weights, request):
    path = request.getfixturevalue(kind)
    (path / weights).parent.mkdir(exist_ok=True)
    (path / weights).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(InputError, match=r"not allowed: weights must be \*\.safetensors"):
        validate_bundle(path)
    with pytest.raises(InputError):
        load_model(path)


def test_auto_map_config_is_refused(plain_dir):
    config = json.loads((plain_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (plain_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="auto_map"):
        validate_bundle(plain_dir)


def test_auto_map_in_tokenizer_config_is_refused(plain_dir):
    config = json.loads((plain_dir / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (plain_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="auto_map"):
        load_model(plain_dir)


def test_code_files_and_missing_weights_are_refused(plain_dir, tmp_path):
    (plain_dir / "modeling_evil.py").write_text("import os\n")
    with pytest.raises(InputError, match="code"):
        validate_bundle(plain_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="safetensors"):
        validate_bundle(empty)
    with pytest.raises(InputError, match="not a directory"):
        validate_bundle(tmp_path / "nowhere")
    (tmp_path / "no-config").mkdir()
    with pytest.raises(InputError, match="config.json is missing"):
        validate_bundle(tmp_path / "no-config")


def test_lantern_encoder_reference_is_confined(lantern_dir):
    config = json.loads((lantern_dir / "config.json").read_text())
    for ref, message in (("package:os", "not one of"), ("../..", "inside the bundle"), ("missing", "does not")):
        (lantern_dir / "config.json").write_text(json.dumps({**config, "encoder": ref}))
        with pytest.raises(InputError, match=message):
            validate_bundle(lantern_dir)


def test_lantern_head_must_match_labels(lantern_dir):
    config = json.loads((lantern_dir / "config.json").read_text())
    (lantern_dir / "config.json").write_text(json.dumps({**config, "labels": ["a", "b", "c"]}))
    with pytest.raises(InputError, match="classes"):
        validate_bundle(lantern_dir)


def test_revision_covers_bundle_and_encoder_files(lantern_dir, plain_dir):
    shipped = bundle_revision(bundle_dir("minilm-rt"))
    assert bundle_revision(lantern_dir) == shipped  # content, not location
    assert len(shipped) == 64 and shipped != bundle_revision(bundle_dir("all-minilm-l6-v2"))
    (lantern_dir / ".complete").write_text("")  # a cache marker is not content
    assert bundle_revision(lantern_dir) == shipped
    (lantern_dir / "NOTES.md").write_text("changed")
    assert bundle_revision(lantern_dir) != shipped
    # the encoder's files count: the same bundle pointing at a (copied, then altered) encoder changes revision
    config = json.loads((lantern_dir / "config.json").read_text())
    shutil.copytree(plain_dir, lantern_dir / "encoder")
    (lantern_dir / "config.json").write_text(json.dumps({**config, "encoder": "encoder", "head": None,
                                                         "labels": None}))
    before = bundle_revision(lantern_dir)
    (lantern_dir / "encoder" / "vocab.txt").write_text("[PAD]\n")
    assert bundle_revision(lantern_dir) != before


def test_zoo_names_and_cache():
    assert {"all-minilm-l6-v2", "minilm-rt"} <= set(zoo_names())
    assert load_model("minilm-rt") is load_model(str(bundle_dir("minilm-rt")))
    assert load_model("minilm-rt").revision == bundle_revision(bundle_dir("minilm-rt"))
    with pytest.raises(InputError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(InputError):
        bundle_dir("../escape")


def test_model_card():
    card = model_card("minilm-rt")
    assert card["labels"] == ["negative", "positive"]
    assert card["layers"][-2:] == ["pool", "output"]
    assert {"gradient", "smoothgrad"} <= set(card["methods"])
    assert card["metrics"]["test_accuracy"] > 0.7 and card["zoo"] is True
    headless = model_card("all-minilm-l6-v2")
    assert headless["labels"] is None and "gradient" not in headless["methods"]


def test_the_client_skips_exactly_what_the_revision_leaves_out():
    """The light client cannot import the engine, so it keeps its own copy of the list; they must agree, or an
    upload would leave out a file the revision covers (or send one it does not)."""
    from service.client import SKIPPED_IN_BUNDLES
    from worker.models.bundle import _IGNORED

    assert SKIPPED_IN_BUNDLES == _IGNORED
