"""Varied synthetic text images, the pretraining data of the base reader (`--style varied`).

Real sites differ in what the `captcha` library keeps fixed, so each image draws its own:
font (every installed font that has all the characters, `caocrvfy.data.fonts`), glyph size,
spacing and overlap, rotation, text and background colours and gradients, noise lines, arcs
and dots, sine warping, blur and JPEG loss, and an image size and aspect ratio between about 70 x 24 and 200 x 60 (resized to the
model's input afterwards). One image in four comes from the `captcha` library with a random
font instead.

Drawing happens in `drawing_pool` worker processes; `secrets`-free but unseeded, so, like the
`captcha` library's images, these are not reproducible pixel for pixel.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from caocrvfy.data.fonts import font_files, load_font

STYLES = ("captcha", "varied")  # "captcha": the `captcha` library only, at the spec's size
SITE_WIDTHS = (70, 200)  # pixels: the widths real captchas come in
SITE_ASPECTS = (2.0, 4.2)  # width / height
SITE_HEIGHTS = (22, 64)
CAPTCHA_LIBRARY_SHARE = 0.25  # of the images, drawn by the `captcha` library with a random font
EXPRESSION_SHARE = 0.15  # of the labels, arithmetic such as 14+27=? when the character set allows


def random_text(rng: np.random.Generator, charset: str, min_length: int, max_length: int) -> str:
    """A label: random characters of `charset`, or now and then an arithmetic expression."""
    length = int(rng.integers(min_length, max_length + 1))
    digits = [c for c in charset if c.isdigit()]
    ops = [c for c in "+-x" if c in charset]
    if digits and ops and length >= 3 and rng.random() < EXPRESSION_SHARE:
        a = "".join(rng.choice(digits, size=int(rng.integers(1, 3))))
        b = "".join(rng.choice(digits, size=int(rng.integers(1, 3))))
        text = f"{a}{rng.choice(ops)}{b}" + ("=?" if "=" in charset and "?" in charset and rng.random() < 0.6 else "")
        if min_length <= len(text) <= max_length:
            return text
    return "".join(rng.choice(list(charset), size=length))


def _luminance(rgb) -> float:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _background(rng: np.random.Generator, width: int, height: int, dark: bool) -> np.ndarray:
    """Float RGB (height, width, 3): flat, a gradient or speckled, light or dark."""
    low, high = (0, 90) if dark else (170, 256)
    first = rng.integers(low, high, 3).astype(np.float32)
    kind = rng.random()
    if kind < 0.4:
        image = np.broadcast_to(first, (height, width, 3)).copy()
    elif kind < 0.8:
        second = rng.integers(low, high, 3).astype(np.float32)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * np.cos(angle) / width + yy * np.sin(angle) / height
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        image = first + (second - first) * t[..., None]
    else:
        image = first + rng.normal(0, rng.uniform(5, 25), (height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255)


def _ink(rng: np.random.Generator, background_luminance: float) -> tuple[int, int, int]:
    """A text colour at least 70 grey levels from the background."""
    while True:
        colour = rng.integers(0, 256, 3)
        if abs(float(_luminance(colour.astype(np.float32))) - background_luminance) >= 70:
            return tuple(int(c) for c in colour)


def glyph_mask(char: str, font: ImageFont.FreeTypeFont, angle: float, shear: float) -> Image.Image:
    """The character's coverage mask ("L"), rotated and sheared, cropped to its ink."""
    left, top, right, bottom = font.getbbox(char)
    pad = max(4, (bottom - top) // 3)
    mask = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - left, pad - top), char, font=font, fill=255)
    if shear:
        w, h = mask.size
        mask = mask.transform((w + int(abs(shear) * h), h), Image.AFFINE,
                              (1, shear, -shear * h if shear > 0 else 0, 0, 1, 0), Image.BILINEAR)
    mask = mask.rotate(angle, resample=Image.BILINEAR, expand=True)
    box = mask.getbbox()
    return mask.crop(box) if box else mask


def draw_noise(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int, colour) -> None:
    for _ in range(int(rng.integers(0, 5))):
        points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(points, fill=colour(), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = int(rng.integers(-width // 2, width // 2)), int(rng.integers(-height, height // 2))
        box = (x0, y0, x0 + int(rng.integers(width // 2, width * 2)), y0 + int(rng.integers(height, height * 3)))
        start = int(rng.integers(0, 360))
        draw.arc(box, start, start + int(rng.integers(30, 180)), fill=colour(), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 3)) * int(rng.integers(0, width * height // 40 + 1))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.point((x, y), fill=colour())


def _warp(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sine displacement of rows and columns, at most a few pixels."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ay, ax = rng.uniform(0, height * 0.08), rng.uniform(0, 2.0)
    py, px = rng.uniform(width * 0.3, width * 1.5), rng.uniform(height * 0.5, height * 2)
    sy = np.clip(yy + ay * np.sin(2 * np.pi * xx / py + rng.uniform(0, 6.3)), 0, height - 1).astype(np.int32)
    sx = np.clip(xx + ax * np.sin(2 * np.pi * yy / px + rng.uniform(0, 6.3)), 0, width - 1).astype(np.int32)
    return image[sy, sx]


def _site_size(rng: np.random.Generator) -> tuple[int, int]:
    width = int(rng.integers(SITE_WIDTHS[0], SITE_WIDTHS[1] + 1))
    height = int(np.clip(round(width / rng.uniform(*SITE_ASPECTS)), *SITE_HEIGHTS))
    return width, height


def place_glyphs(glyphs: list[Image.Image], spacing: float, width: int, height: int,
                 rng: np.random.Generator) -> list[tuple[Image.Image, tuple[int, int]]]:
    """Each glyph mask, shrunk where the row would not fit, with its (x, y) on a `width` x
    `height` canvas: left to right, `spacing` (a share of the mean glyph width, overlap below 0)
    apart, the row placed at random, each glyph at a random height about the middle."""
    mean_width = float(np.mean([g.width for g in glyphs])) if glyphs else 1.0
    step = [max(1, int(g.width + spacing * mean_width)) for g in glyphs]
    total = sum(step[:-1]) + (glyphs[-1].width if glyphs else 0)
    tallest = max((g.height for g in glyphs), default=1)
    scale = min(1.0, width * rng.uniform(0.8, 0.97) / max(total, 1), height * 0.95 / max(tallest, 1))
    if scale < 1.0:
        glyphs = [g.resize((max(1, int(g.width * scale)), max(1, int(g.height * scale))), Image.BILINEAR) for g in glyphs]
        step = [max(1, int(s * scale)) for s in step]
        total = int(total * scale)
    x = int(rng.integers(0, max(1, width - total) + 1))
    placed = []
    for glyph, advance in zip(glyphs, step):
        slack = max(0, height - glyph.height)
        y = int(np.clip(slack / 2 + rng.normal(0, slack / 4 + 1), 0, slack))
        placed.append((glyph, (x, y)))
        x += advance
    return placed


def draw_text(text: str, rng: np.random.Generator, fonts: tuple[str, ...], size: tuple[int, int] | None = None) -> Image.Image:
    """One varied captcha of `text` as an RGB image of `size` (width, height), or of a random
    site-like size."""
    width, height = size or _site_size(rng)
    dark = rng.random() < 0.15
    background = _background(rng, width, height, dark)
    base_luminance = float(_luminance(background).mean())
    one_font = rng.random() < 0.8
    font_path = fonts[int(rng.integers(len(fonts)))]
    font_size = max(8, int(height * rng.uniform(0.55, 0.95)))
    one_colour = rng.random() < 0.5
    colour = _ink(rng, base_luminance)
    max_angle = rng.choice([0.0, 8.0, 20.0, 35.0])
    shear = rng.uniform(-0.4, 0.4) if rng.random() < 0.3 else 0.0
    glyphs, colours = [], []
    for char in text:
        path = font_path if one_font else fonts[int(rng.integers(len(fonts)))]
        size_jitter = font_size if rng.random() < 0.7 else max(8, int(font_size * rng.uniform(0.8, 1.15)))
        glyphs.append(glyph_mask(char, load_font(path, size_jitter), rng.uniform(-max_angle, max_angle), shear))
        colours.append(colour if one_colour else _ink(rng, base_luminance))
    spacing = rng.uniform(-0.25, 0.35)  # of the mean glyph width: overlap below 0
    canvas = Image.fromarray(background.astype(np.uint8), "RGB")
    for (glyph, at), ink in zip(place_glyphs(glyphs, spacing, width, height, rng), colours):
        canvas.paste(Image.new("RGB", glyph.size, ink), at, glyph)
    draw = ImageDraw.Draw(canvas)

    def noise_colour():
        return _ink(rng, base_luminance) if rng.random() < 0.5 else tuple(int(c) for c in rng.integers(0, 256, 3))

    draw_noise(draw, rng, width, height, noise_colour)
    image = np.asarray(canvas)
    if rng.random() < 0.35:
        image = _warp(image, rng)
    canvas = Image.fromarray(np.ascontiguousarray(image), "RGB")
    if rng.random() < 0.25:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        canvas.save(buffer, "JPEG", quality=int(rng.integers(30, 90)))
        canvas = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return canvas


class VariedDrawer:
    """Draws varied captchas in one process: the fonts found once, the `captcha` library's
    generators cached per font and size."""

    def __init__(self, charset: str):
        self.fonts = font_files(charset)
        self.rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        self._captchas: dict = {}

    def _library(self, width: int, height: int):
        from captcha.image import ImageCaptcha

        font = self.fonts[int(self.rng.integers(len(self.fonts)))]
        key = (font, width, height)
        if key not in self._captchas:
            if len(self._captchas) > 64:
                self._captchas.clear()
            sizes = tuple(int(height * f) for f in (0.7, 0.82, 0.92))
            self._captchas[key] = ImageCaptcha(width=width, height=height, fonts=[font], font_sizes=sizes)
        return self._captchas[key]

    def image(self, text: str) -> Image.Image:
        width, height = _site_size(self.rng)
        if self.rng.random() < CAPTCHA_LIBRARY_SHARE:
            return self._library(width, height).generate_image(text).convert("RGB")
        return draw_text(text, self.rng, self.fonts, (width, height))

    def labels(self, charset: str, min_length: int, max_length: int, count: int) -> list[str]:
        return [random_text(self.rng, charset, min_length, max_length) for _ in range(count)]
