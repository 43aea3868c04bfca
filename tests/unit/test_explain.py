"""explain(): the result document of docs/api.md, its tensors and figures."""
from __future__ import annotations

import json

import pytest
import torch

from worker.methods import Cancelled, explain
from worker.models import InputError

PNG = b"\x89PNG\r\n\x1a\n"
TEXT = "a gorgeous , moving and wonderfully acted film ."


def test_result_document(minilm_rt):
    fractions = []
    ex = explain(minilm_rt, {"text": TEXT}, ["gradient", "smoothgrad"], params={"smoothgrad": {"samples": 4}},
                 seed=3, progress=fractions.append)
    result = json.loads(json.dumps(ex.result))  # JSON-serialisable as is
    assert result["schema_version"] == 1
    tokens = result["tokens"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "##ly" in tokens
    assert result["special"] == [True] + [False] * (len(tokens) - 2) + [True]
    assert [t for w in result["words"] for t in w] == list(range(len(tokens)))
    assert "wonderfully" in result["word_strings"]
    prediction = result["prediction"]
    assert prediction["label"] == "positive" == result["target"]
    assert set(prediction["probabilities"]) == {"negative", "positive"}
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    for name in ("gradient", "smoothgrad"):
        part = result["methods"][name]
        assert len(part["scores"]) == len(tokens)
        assert len(part["word_scores"]) == len(result["words"])
        group = next(w for w in result["words"] if len(w) > 1)
        assert part["word_scores"][result["words"].index(group)] == pytest.approx(
            sum(part["scores"][t] for t in group))
        assert ex.figures[f"{name}.png"].startswith(PNG)
        assert set(ex.tensors[name]) == {"gradient", "scores"}
        assert ex.tensors[name]["scores"].tolist() == pytest.approx(part["scores"])
    assert result["methods"]["smoothgrad"]["params"] == {"samples": 4, "noise": 0.1, "batch_size": 16,
                                                         "aggregate": "mean_abs", "stability": False}
    assert result["provenance"]["seed"] == 3 and result["provenance"]["model_revision"] == minilm_rt.revision
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_target_and_score(minilm_rt):
    ex = explain(minilm_rt, {"text": TEXT}, ["gradient"], target="negative", score="probability")
    assert ex.result["target"] == "negative" and ex.result["prediction"]["label"] == "positive"
    with pytest.raises(InputError, match="unknown target"):
        explain(minilm_rt, {"text": TEXT}, ["gradient"], target="neutral")
    with pytest.raises(InputError, match="score"):
        explain(minilm_rt, {"text": TEXT}, ["gradient"], score="odds")


def test_refusals(minilm_rt, minilm):
    with pytest.raises(InputError, match="output head"):
        explain(minilm, {"text": TEXT}, ["gradient"])
    with pytest.raises(InputError, match="unknown method"):
        explain(minilm_rt, {"text": TEXT}, ["gradient", "telepathy"])
    with pytest.raises(InputError, match="params.smoothgrad"):
        explain(minilm_rt, {"text": TEXT}, ["smoothgrad"], params={"smoothgrad": {"samples": -1}})
    with pytest.raises(InputError, match="not requested"):
        explain(minilm_rt, {"text": TEXT}, ["gradient"], params={"smoothgrad": {}})
    with pytest.raises(InputError, match="empty"):
        explain(minilm_rt, {"text": " "}, ["gradient"])


def test_headless_model_without_methods_still_tokenises(minilm):
    ex = explain(minilm, {"premise": "A man sleeps.", "hypothesis": "Nobody is awake."}, [])
    assert ex.result["prediction"] is None and ex.result["target"] is None
    assert ex.result["methods"] == {}
    assert ex.result["tokens"].count("[SEP]") == 2


def test_cancel_propagates(minilm_rt):
    def cancel(fraction):
        if fraction > 0.1:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        explain(minilm_rt, {"text": TEXT}, ["smoothgrad"], params={"smoothgrad": {"samples": 40, "batch_size": 2}},
                progress=cancel)
    assert torch.is_grad_enabled()
