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


def test_tick_labels_write_every_tick_exactly():
    from worker.render.raster import tick_labels, ticks

    assert tick_labels([0.0, 0.25, 0.5, 0.75, 1.0]) == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    assert tick_labels([-1.0, -0.5, 0.0, 0.5]) == ["\u22121.0", "\u22120.5", "0.0", "0.5"]
    assert tick_labels([-2e-5, -1e-5, 0.0]) == ["\u22122.00e\u221205", "\u22121.00e\u221205", "0"]
    assert ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # matplotlib's own positions


@pytest.mark.parametrize("scores", [[0.0, 0.9, -0.4, 0.2, 0.5, 0.0], [0.0, 0.1, 0.7, 0.1, 0.3, 0.0]])
def test_each_word_is_painted_in_its_colour(scores):
    """The heat strip: some pixel row of the figure is exactly the words' cells in order, each one column wide and
    in the colour matplotlib's colour map gives its score (diverging, centred on 0, for signed scores; the sequential
    map from 0.15 otherwise), computed here independently."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize, TwoSlopeNorm
    from PIL import Image

    from worker.render.tokens import COLUMN

    words = np.array([0.9, -0.4 + 0.2, 0.5]) if scores[2] < 0 else np.array([0.1, 0.8, 0.3])
    if (words < 0).any():
        rgba = colormaps["RdBu_r"](TwoSlopeNorm(0.0, -abs(words).max(), abs(words).max())(words))
    else:
        rgba = colormaps["YlOrRd"](0.15 + 0.85 * Normalize(0.0, words.max())(words))
    expected = np.repeat((np.asarray(rgba)[:, :3] * 255).round().astype(int), COLUMN, axis=0)  # 3·COLUMN × 3
    image = np.asarray(Image.open(io.BytesIO(token_scores_png(TOKENS, SPECIAL, WORDS, scores))).convert("RGB"))
    width = len(expected)
    starts = np.argwhere((image == expected[0]).all(-1))  # pixels of the first word's colour
    strip_rows = {int(y) for y, x in starts if x + width <= image.shape[1]
                  and np.abs(image[y, x:x + width].astype(int) - expected).max() <= 2}
    assert len(strip_rows) >= 40  # the strip is 62 pixels high


def test_a_long_title_widens_the_figure():
    short = size(token_scores_png(TOKENS, SPECIAL, WORDS, [0.1] * 6, title="g"))
    long = size(token_scores_png(TOKENS, SPECIAL, WORDS, [0.1] * 6, title="integrated gradients " * 4))
    assert long[0] > short[0] + 300 and long[1] == short[1]


def test_png_bytes_keep_every_pixel():
    """The figure's own PNG writer (no filters, worker/render/raster.py): a standard decoder reads back the exact
    pixels of a canvas with text, flat colours and noise, and its size."""
    import numpy as np
    from PIL import Image, ImageDraw

    from worker.render.raster import TEXT, font, png_bytes

    noise = np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    canvas = Image.new("RGB", (211, 97), "white")
    canvas.paste(Image.fromarray(noise), (150, 40))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([5, 5, 60, 30], fill=(12, 200, 99))
    draw.text((10, 50), "gradient ∂S/∂x", font=font(TEXT), fill="#1f2937")
    png = png_bytes(canvas)
    decoded = Image.open(io.BytesIO(png))
    decoded.load()  # checks the chunks' CRCs and the zlib stream
    assert png.startswith(PNG) and decoded.mode == "RGB" and decoded.size == (211, 97)
    assert decoded.tobytes() == canvas.tobytes()
    with pytest.raises(ValueError):
        png_bytes(Image.new("RGBA", (4, 4)))


def test_cached_word_labels_draw_the_same_figure():
    """The turned word labels are cached across figures (worker/render/raster.py): a figure drawn with every label
    cached is byte for byte the one drawn with none."""
    from worker.render import raster

    scores = [0.1, -0.2, 0.5, 0.3, 0.4, 0.05]
    raster._turned.cache_clear()
    cold = token_scores_png(TOKENS, SPECIAL, WORDS, scores, title="gradient", show_special=True)
    assert raster._turned.cache_info().misses > 0
    warm = token_scores_png(TOKENS, SPECIAL, WORDS, scores, title="gradient", show_special=True)
    assert raster._turned.cache_info().hits > 0 and warm == cold
