"""The stored result of the model-randomisation sanity check (``sanity.json``, written by
``python -m worker.methods.sanity``), read by the registry to fill ``Method.sanity``. Kept apart from the check
itself, which runs explanations through the registry, so that the registry does not import it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("sanity.json")


def load() -> dict[str, dict[str, Any]]:
    """{method: {"spearman": mean ρ, "weak": bool, "sentences", "model"}} from sanity.json (empty if absent)."""
    try:
        return json.loads(PATH.read_text(encoding="utf-8"))["methods"]
    except (OSError, ValueError, KeyError):
        return {}
