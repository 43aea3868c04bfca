"""The aggregates so far, folded batch by batch from running sums, are the numbers the final report computes from
every item at once (sigma aside), whatever order the batches finish in and across models; the artifact writer
stores all of a job's or an audit's files or none."""
from __future__ import annotations

import math
import random
from typing import Any

import pytest

from service.storage import LocalStore
from worker.artifacts import store_files
from worker.report import (
    aggregate,
    fold_batch,
    is_folded,
    results_by_model,
    running_aggregates,
    running_state,
)

WORDS = ["the", "a", "film", "dull", "gripping", "plot", "of", "moving", "mess", "best", "year", "jokes", ","]
REQUEST = {"models": ["m1", "m2"], "methods": ["gradient", "grad_x_input"], "top_k": 3}


def _result(rng: random.Random, words: list[str]) -> dict[str, Any]:
    def scores() -> dict[str, Any]:
        return {"word_scores": [rng.uniform(-1, 1) for _ in words],
                "faithfulness": {"comprehensiveness": rng.random(), "sufficiency": rng.random(),
                                 "lift": rng.random()}}

    return {"word_strings": words, "words": [[i + 1] for i in range(len(words))],
            "special": [True] + [False] * len(words) + [True],
            "prediction": {"label": rng.choice(["positive", "negative"])},
            "methods": {"gradient": scores(), "grad_x_input": scores()}}


def _items(n: int, batch_size: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    texts = [[rng.choice(WORDS) for _ in range(rng.randint(3, 9))] for _ in range(n)]
    items = []
    for model in REQUEST["models"]:
        for pos, words in enumerate(texts):
            failed = rng.random() < 0.15
            items.append({"model": model, "position": pos, "batch": pos // batch_size,
                          "label": rng.choice(["positive", "negative", None]),
                          "status": "failed" if failed else "done",
                          "result": None if failed else _result(rng, words)})
    return items


def _fold_all(items: list[dict[str, Any]], order: list[tuple[str, int]]) -> dict[str, Any]:
    """Fold the batches in the given order, as worker/audit.py's fold does (partners: other models' folded batch)."""
    state = running_state(REQUEST)
    for model, batch in order:
        assert not is_folded(state, model, batch)
        per_model = results_by_model([i for i in items if i["batch"] == batch])
        partners = {m: per_model.get(m, []) for m in REQUEST["models"] if m != model and is_folded(state, m, batch)}
        state = fold_batch(state, REQUEST, model, batch, per_model.get(model, []), partners)
    return state


def assert_close(got: Any, want: Any, where: str = "aggregates") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(got), sorted(want))
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for n, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{n}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (where, got, want)
    else:
        assert got == want, (where, got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folded_in_any_order_the_sums_give_the_final_numbers(seed):
    items = _items(23, batch_size=4, seed=seed)
    order = [(m, b) for m in REQUEST["models"] for b in range(6)]
    random.Random(seed).shuffle(order)
    state = _fold_all(items, order)
    assert_close(running_aggregates(state, REQUEST), aggregate(items, REQUEST))
    assert set(running_aggregates(state, REQUEST)["model_agreement"]) == {"m1~m2:gradient", "m1~m2:grad_x_input"}


def test_part_way_the_sums_are_the_aggregates_of_the_items_done_so_far():
    items = _items(12, batch_size=4)
    order = [("m1", 0), ("m2", 1), ("m1", 2)]
    so_far = [i for i in items if (i["model"], i["batch"]) in order]
    assert_close(running_aggregates(_fold_all(items, order), REQUEST), aggregate(so_far, REQUEST))


def test_before_any_batch_and_without_word_scores():
    empty = running_aggregates(running_state(REQUEST), REQUEST)
    assert empty == aggregate([], REQUEST)
    items = _items(4, batch_size=4)
    for item in items:
        if item["result"]:
            del item["result"]["methods"]["grad_x_input"]["word_scores"]  # a method that scores no words
    state = _fold_all(items, [("m1", 0), ("m2", 0)])
    view = running_aggregates(state, REQUEST)
    assert_close(view, aggregate(items, REQUEST))
    assert "grad_x_input" not in view["models"]["m1"]["methods"] and "agreement" not in view["models"]["m1"]


class FullStore(LocalStore):
    """Full after `room` writes."""

    def __init__(self, root, room: int) -> None:
        super().__init__(root)
        self.room = room

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if self.room == 0:
            raise OSError(28, "No space left on device")
        self.room -= 1
        super().put(key, data, content_type)


def test_the_writer_stores_every_file_or_none(tmp_path):
    files = {"summary.json": (b"{}", "application/json"), "items.csv": (b"a,b\n", "text/csv")}
    rows = store_files(LocalStore(tmp_path / "ok"), files, audit_id="a1")
    assert [(r.audit_id, r.job_id, r.storage_key, r.bytes) for r in rows] == [
        ("a1", None, "audits/a1/summary.json", 2), ("a1", None, "audits/a1/items.csv", 4)]
    assert store_files(LocalStore(tmp_path / "ok"), files, job_id="j1")[0].storage_key == "jobs/j1/summary.json"
    full = FullStore(tmp_path / "full", room=1)
    with pytest.raises(OSError):
        store_files(full, files, audit_id="a1")
    assert not [p for p in (tmp_path / "full").rglob("*") if p.is_file()]  # the first file went again
    with pytest.raises(ValueError):
        store_files(full, files, job_id="j1", audit_id="a1")
