"""The Rotten Tomatoes split is made once and never moves."""
from __future__ import annotations

from collections import Counter

import pytest

from worker.data.rt import SPLITS, rt_sentences, rt_split, split_digest

# fingerprints of the split as first made (worker/data/rt.py); a change here changes every zoo model's data
DIGESTS = {
    "train": "517b45cf82d096270b9491e8386436df5db4601150b86e29aa4be476c4710a69",
    "dev": "42951dbedbbea3a6865ce01ab1fa28796601fab7b8af96f412bb46aeb011b66c",
    "test": "fed8a8f77dc07dbed19f314ec0b3e24676faecf58616bae48d8825770efe3199",
}


def test_sizes_labels_and_disjointness():
    splits = {name: rt_split(name) for name in SPLITS}
    assert [len(splits[n]) for n in SPLITS] == [6824, 853, 853]
    texts = [set(t for t, _ in rows) for rows in splits.values()]
    assert sum(len(t) for t in texts) == len(set().union(*texts)) == len(rt_sentences()) == 8530
    labels = Counter(label for rows in splits.values() for _, label in rows)
    assert labels == {"negative": 4265, "positive": 4265}
    for rows in splits.values():
        share = sum(label == "positive" for _, label in rows) / len(rows)
        assert 0.45 < share < 0.55


def test_split_is_fixed():
    assert {name: split_digest(name) for name in SPLITS} == DIGESTS


def test_known_sentence_labels():
    rows = dict(rt_sentences())
    assert rows["simplistic , silly and tedious ."] == "negative"
    assert rows["effective but too-tepid biopic"] == "positive"


def test_unknown_split():
    with pytest.raises(ValueError):
        rt_split("validation")
