"""Drawing figures straight onto a Pillow canvas, in the figure style of :mod:`worker.render.style`.

Why not matplotlib for every figure: the token-score figure is drawn for every token-scoring method of every job,
and matplotlib spends ~0.3 s laying out and encoding it (text extents, a tight bounding box drawn twice, zlib at
level 6) around a 12 ms gradient. Drawn here it takes a few milliseconds with the same fonts (DejaVu Sans, shipped
with matplotlib), colours and tick positions (matplotlib's locator), so a job's time is its method's again.
The other figures (maps, sigma, ESIM) stay matplotlib: they are drawn once per job kind that asks for them.
"""
from __future__ import annotations

import math
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# sizes in pixels at the style's 150 dpi: 10 pt text = 21 px
TEXT, SMALL, TITLE = 21, 17, 25


@lru_cache(maxsize=8)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


@lru_cache(maxsize=4096)
def text_size(text: str, face: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """Width and height of `text` in pixels; cached because a figure measures its labels, ticks and title ~36
    times (each a FreeType layout) and they recur across jobs."""
    left, top, right, bottom = face.getbbox(text)
    return int(right - left), int(bottom - top)


def rotated_text(canvas: Image.Image, text: str, anchor: tuple[float, float], face: ImageFont.FreeTypeFont,
                 colour: str, degrees: float) -> None:
    """Text turned `degrees` counter-clockwise whose top-right corner (in the text's own frame) sits at `anchor`:
    matplotlib's ``rotation_mode="anchor", ha="right", va="top"`` tick labels."""
    turned, (x, y) = _turned(text, face, degrees)
    canvas.paste(Image.new("RGB", turned.size, colour), (round(anchor[0] - x), round(anchor[1] - y)), turned)


@lru_cache(maxsize=1024)
def _turned(text: str, face: ImageFont.FreeTypeFont, degrees: float) -> tuple[Image.Image, tuple[float, float]]:
    """The turned text's mask and the position of its anchor corner in it. Cached: every job's figure writes its
    words this way, and words recur across jobs (rendering and turning one took ~0.25 ms; the mask is only read)."""
    left, top, right, bottom = face.getbbox(text)
    w, h = int(right - left) + 2, int(bottom - top) + 2
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, font=face, fill=255)
    turned = mask.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True)
    a = math.radians(degrees)
    dx, dy = w / 2, -h / 2  # the top-right corner from the text's centre, y down
    x = turned.width / 2 + dx * math.cos(a) + dy * math.sin(a)
    y = turned.height / 2 - dx * math.sin(a) + dy * math.cos(a)
    return turned, (x, y)


def png_bytes(canvas: Image.Image) -> bytes:
    """An RGB canvas as PNG (no metadata): every scanline unfiltered, zlib level 3.

    Written here rather than by Pillow because Pillow picks a filter per scanline by trying all five, and on this
    figure (1,381 x 584 px) that search cost more than the compression: 13 ms per figure at level 3 (10 ms even
    at level 0), against 5.5 ms here; 57 KiB either way for 20 words, up to ~12 % larger for 40 (flat colours on
    white need little filtering: a few KiB of storage for half the encode). The pixels are
    the canvas's exactly: PNG is lossless whatever the filter (tests/unit/test_render.py decodes and compares)."""
    if canvas.mode != "RGB":  # the only kind the figures paint; another would need its own colour type here
        raise ValueError(f"png_bytes writes RGB canvases, not {canvas.mode}")
    width, height = canvas.size
    lines = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # column 0: each scanline's filter type, 0 = none
    lines[:, 1:] = np.asarray(canvas).reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits per channel, truecolour, no interlace
    return (PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(lines.tobytes(), 3))
            + _chunk(b"IEND", b""))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def tick_labels(values: list[float]) -> list[str]:
    """Labels for tick positions with one number of decimals, the fewest that write every tick exactly (0.25 and
    0.75 get two, 0.5 and 1.0 one); very small or large scales in 3-digit scientific notation. Matplotlib's minus
    sign, and no "−0"."""
    span = max((abs(v) for v in values), default=0.0)
    if span and (span >= 1e5 or span < 1e-3):
        return [_minus(f"{v:.2e}" if v else "0") for v in values]
    for decimals in range(1, 7):
        if all(abs(round(v, decimals) - v) <= 1e-9 * (span or 1.0) for v in values):
            break
    return [_minus(f"{(v if abs(v) > 1e-12 * (span or 1.0) else 0.0):.{decimals}f}") for v in values]


def _minus(text: str) -> str:
    return text.replace("-", "\u2212")


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Tick positions in [low, high] as matplotlib's default locator picks them."""
    from matplotlib.ticker import MaxNLocator

    found = MaxNLocator(nbins=count, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
    span = (high - low) or 1.0
    return [float(v) for v in found if low - 1e-9 * span <= v <= high + 1e-9 * span]
