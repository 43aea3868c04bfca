"""Built-in audit corpora, by name (docs/api.md): each is a list of items {"text"} or {"premise", "hypothesis"},
with an optional "label"."""
from __future__ import annotations

from collections.abc import Callable


def _rt(split: str) -> list[dict[str, str]]:
    from worker.data.rt import rt_split

    return [{"text": text, "label": label} for text, label in rt_split(split)]


CORPORA: dict[str, Callable[[], list[dict[str, str]]]] = {
    "rt-test": lambda: _rt("test"),
    "rt-dev": lambda: _rt("dev"),
}


def corpus(name: str) -> list[dict[str, str]]:
    return CORPORA[name]()
