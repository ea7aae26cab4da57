"""The fonts the synthetic generators draw with, and which of them draw two characters alike.

`font_files(charset)` is every installed font that has all the characters: matplotlib's DejaVu
and STIX, the `captcha` library's DroidSansMono, and system fonts such as Debian's
`fonts-liberation2`, `fonts-freefont-ttf` and `fonts-urw-base35`.

Many of them draw two characters as one shape: `I` and `l` are the same bar in most sans
fonts, `0` and `O` the same ring in some. `alike_pairs(path, charset)` finds those pairs: each
glyph drawn at `FONT_SIZE`, cut to its ink and stretched to `SHAPE` x `SHAPE`, and two glyphs
of about the same height and width (`SIZE_RATIO`) whose shapes overlap by more than
`SAME_SHAPE` (intersection over union) count as alike. The test errs towards "alike" (`n` and
`u` overlap that much in two bold serif fonts), so `distinct_fonts` leaves out a few fonts
that a reader could in fact tell apart. `benchmarks/lookalikes.py` prints the pairs and what
they cost a reader.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_NOT_TEXT = ("LastResort", "STIXSiz", "STIXNonUni", "cmex", "cmsy", "cmmi", "Symbol", "D050000L", "Z003")
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")
FONT_SIZE = 48  # pixels, the size glyphs are compared at
SHAPE = 32  # pixels a side, the glyphs' shapes are compared at
SAME_SHAPE = 0.85  # intersection over union above which two glyphs count as one shape
SIZE_RATIO = (0.9, 0.8)  # heights within 10% and widths within 20% of each other: the same size


def _font_dirs() -> list[Path]:
    import captcha
    import matplotlib

    dirs = [Path(matplotlib.get_data_path()) / "fonts" / "ttf", Path(captcha.__file__).parent / "data"]
    return dirs + [Path(d) for d in SYSTEM_FONT_DIRS]


@functools.lru_cache(maxsize=None)
def font_files(charset: str) -> tuple[str, ...]:
    """Every installed font file that has a glyph for each character of `charset`; a file name
    found twice (matplotlib's DejaVu and Debian's) counts once."""
    from fontTools.ttLib import TTFont

    found: dict[str, str] = {}
    for folder in _font_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in (".ttf", ".otf") or any(n in path.name for n in _NOT_TEXT):
                continue
            try:
                cmap = TTFont(path, lazy=True, fontNumber=0).getBestCmap() or {}
            except Exception:
                continue
            if all(ord(c) in cmap for c in charset):
                found.setdefault(path.name, str(path))
    if not found:
        raise RuntimeError(f"no installed font draws all of {charset!r}; install fonts-dejavu-core")
    return tuple(found.values())


@functools.lru_cache(maxsize=512)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def ink(char: str, font: ImageFont.FreeTypeFont) -> np.ndarray:
    """The glyph of `char` as a boolean array, cut to its ink (one pixel where it has none)."""
    size = font.size
    canvas = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 4), char, font=font, fill=255)
    pixels = np.asarray(canvas) > 127
    rows, cols = np.nonzero(pixels)
    if not len(rows):
        return np.zeros((1, 1), bool)
    return pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def shape(glyph: np.ndarray) -> np.ndarray:
    """A glyph stretched to SHAPE x SHAPE."""
    return np.asarray(Image.fromarray(glyph.astype(np.uint8) * 255).resize((SHAPE, SHAPE))) > 127


def shape_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two glyphs, each stretched to SHAPE x SHAPE."""
    a, b = shape(a), shape(b)
    return float((a & b).sum() / max(1, (a | b).sum()))


@functools.lru_cache(maxsize=None)
def alike_pairs(path: str, charset: str) -> tuple[str, ...]:
    """The pairs of `charset`'s characters (as two-character strings, in charset order) that
    the font at `path` draws as one shape at one size."""
    font = load_font(path, FONT_SIZE)
    glyphs = [ink(c, font) for c in charset]
    heights = np.array([g.shape[0] for g in glyphs], float)
    widths = np.array([g.shape[1] for g in glyphs], float)
    shapes = np.stack([shape(g).ravel() for g in glyphs]).astype(np.float32)
    inter = shapes @ shapes.T
    area = shapes.sum(1)
    iou = inter / np.maximum(1.0, area[:, None] + area[None, :] - inter)

    def near(sizes, ratio):
        r = sizes[:, None] / sizes[None, :]
        return (r > ratio) & (r < 1 / ratio)

    alike = (iou > SAME_SHAPE) & near(heights, SIZE_RATIO[0]) & near(widths, SIZE_RATIO[1])
    first, second = np.nonzero(np.triu(alike, k=1))
    return tuple(charset[i] + charset[j] for i, j in zip(first, second))


@functools.lru_cache(maxsize=None)
def distinct_fonts(charset: str) -> tuple[str, ...]:
    """The fonts of `font_files(charset)` that draw no two of its characters alike, or all of
    them where none does (a charset such as `Il` that every font draws alike)."""
    fonts = font_files(charset)
    return tuple(p for p in fonts if not alike_pairs(p, charset)) or fonts
