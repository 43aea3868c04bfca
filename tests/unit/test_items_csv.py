"""items.csv (worker/report.py): string cells a spreadsheet would run as formulas are neutralised; numbers stay
numbers, so that pandas (or a spreadsheet) reads the probability and lift columns as floats."""
from __future__ import annotations

import io

import pandas as pd

from worker.report import items_csv

REQUEST = {"methods": ["gradient"]}


def item(position: int, text: str, label: str | None, lift: float | None, probability: float) -> dict:
    result = {"prediction": {"label": "positive", "probabilities": {"positive": probability}},
              "methods": {"gradient": {"faithfulness": {"lift": lift}}}}
    return {"model": "minilm-rt", "position": position, "status": "succeeded", "label": label,
            "input": {"text": text}, "result": result, "error": None}


ITEMS = [item(0, "=1+1", "-cmd", -0.0228, 0.75), item(1, "-cmd /c calc", "+x", 0.5, 0.25),
         item(2, "@SUM(A1)", None, None, 1e-07), item(3, "a plain sentence", "positive", -3.0, 0.5)]


def test_numbers_read_back_as_floats_and_formula_strings_stay_neutralised():
    table = pd.read_csv(io.BytesIO(items_csv(ITEMS, REQUEST)))
    assert table["gradient_lift"].dtype == "float64" and table["probability"].dtype == "float64"
    assert table["gradient_lift"].tolist()[:2] == [-0.0228, 0.5] and pd.isna(table["gradient_lift"][2])
    assert table["gradient_lift"][3] == -3.0 and table["probability"][2] == 1e-07
    assert table["position"].dtype == "int64"
    assert table["input"].tolist() == ["'=1+1", "'-cmd /c calc", "'@SUM(A1)", "a plain sentence"]
    assert table["label"].tolist()[:2] == ["'-cmd", "'+x"]


def test_every_formula_prefix_is_neutralised_in_string_cells():
    for prefix in ("=", "+", "-", "@", "\t", "\r"):
        text = f"{prefix}HYPERLINK(\"http://x\")"
        table = pd.read_csv(io.BytesIO(items_csv([item(0, text, None, 0.1, 0.5)], REQUEST)))
        assert table["input"][0] == "'" + text
