"""The token-score figure: PNG bytes, specials hidden by default, any length and sign."""
from __future__ import annotations

import io

import pytest

from worker.render import token_scores_png
from worker.render.tokens import word_columns

PNG = b"\x89PNG\r\n\x1a\n"
TOKENS = ["[CLS]", "a", "wonder", "##ful", "film", "[SEP]"]
SPECIAL = [True, False, False, False, False, True]
WORDS = [[0], [1], [2, 3], [4], [5]]


def size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(png)).size


def test_png_and_specials_hidden():
    scores = [0.1, 0.2, 0.5, 0.3, 0.4, 0.05]
    hidden = token_scores_png(TOKENS, SPECIAL, WORDS, scores, title="gradient")
    shown = token_scores_png(TOKENS, SPECIAL, WORDS, scores, title="gradient", show_special=True)
    assert hidden.startswith(PNG) and shown.startswith(PNG)
    assert hidden != shown
    labels, values = word_columns(TOKENS, SPECIAL, WORDS, scores)
    assert labels == ["a", "wonderful", "film"] and values.tolist() == pytest.approx([0.2, 0.8, 0.4])
    labels, _ = word_columns(TOKENS, SPECIAL, WORDS, scores, show_special=True)
    assert labels == ["[CLS]", "a", "wonderful", "film", "[SEP]"]
    labels, _ = word_columns(TOKENS, SPECIAL, WORDS, scores, words=["[CLS]", "A", "wonderful", "film", "[SEP]"])
    assert labels[0] == "A"


@pytest.mark.parametrize("scores", [[0.0] * 6, [-1.0, 2.0, -3.0, 0.5, float("nan"), 1.0]])
def test_degenerate_and_signed_scores(scores):
    assert token_scores_png(TOKENS, SPECIAL, WORDS, scores).startswith(PNG)


def test_long_input_wraps():
    n = 70
    png = token_scores_png([f"w{i}" for i in range(n)], [False] * n, [[i] for i in range(n)],
                           [i / n for i in range(n)], subtitle="target: positive (logit)")
    width, height = size(png)
    assert png.startswith(PNG) and height > 1000 and width < 3000
