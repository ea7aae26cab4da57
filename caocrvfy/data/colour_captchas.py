"""Two-colour captchas, "type the red characters" (`caocrvfy generate --colour-key red,blue`).

Each image draws its label in the kept colour and, interleaved at random places, between one
and as many decoy characters in the other; every character gets its own shade of its colour
(`ColourKey.sample`), on a light background with grey noise lines, arcs and dots. The label is
the kept characters in order. Drawn at the spec's width x height, in `drawing_pool` workers;
unseeded, so not reproducible pixel for pixel.

What a site keeps consistent, these keep readable: each image is drawn in one font, one of
those that draw no two of the characters alike (`fonts.distinct_fonts`: no `I` that is the `l`
of the same font), and the glyph sizes vary less than a lower-case letter differs from its
capital, so that the other characters give the case a scale. With every font and a wider size
range (before 2026-12-07), about 3 in 100 of these captchas could not be read by any reader;
with 30% of the characters in a second font (until 2026-12-07, afternoon), a `V` drawn in a
smaller font was a `v` to the eye (BENCHMARKS.md, "Arithmetic and colour-keyed captchas").
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from caocrvfy.data.colour_keys import parse_pair
from caocrvfy.data.fonts import distinct_fonts, load_font
from caocrvfy.data.varied import draw_noise, glyph_mask, place_glyphs

BACKGROUND_LEVELS = (228, 256)  # per channel: a faint tint, too pale for any key to match
NOISE_GREYS = (120, 211)  # grey levels of the noise: no hue, and lighter than "black" matches
GLYPH_HEIGHT = (0.62, 0.76)  # font size, of the image height: a narrower range than a lower-case letter is
# of its capital (0.74-0.76 of the height for c o s v w x z), so that the case can be told by size
MAX_ANGLE = 20.0  # degrees
SPACING = (0.0, 0.25)  # of the mean glyph width: touching but not overlapping, so no colour hides another


def draw_keyed(label: str, decoys: str, rng: np.random.Generator, fonts: tuple[str, ...], keep, decoy,
               size: tuple[int, int]) -> Image.Image:
    """An RGB image of `size` (width, height): `label` in shades of `keep` (a ColourKey) and
    `decoys` in shades of `decoy`, interleaved at random."""
    width, height = size
    background = rng.integers(*BACKGROUND_LEVELS, 3).astype(np.float32)
    speckle = rng.normal(0, 3, (height, width, 1)).astype(np.float32)
    canvas = Image.fromarray(np.clip(background + speckle, 0, 255).astype(np.uint8), "RGB")
    kept_here = rng.permutation(len(label) + len(decoys)) < len(label)  # True: a kept character's place
    kept, others = iter(label), iter(decoys)
    chars = [(next(kept), keep) if is_kept else (next(others), decoy) for is_kept in kept_here]
    font = load_font(fonts[int(rng.integers(len(fonts)))], max(8, int(height * rng.uniform(*GLYPH_HEIGHT))))
    glyphs = [glyph_mask(char, font, rng.uniform(-MAX_ANGLE, MAX_ANGLE), 0.0) for char, _ in chars]
    for (glyph, at), (_, key) in zip(place_glyphs(glyphs, rng.uniform(*SPACING), width, height, rng), chars):
        canvas.paste(Image.new("RGB", glyph.size, key.sample(rng)), at, glyph)

    def grey():
        level = int(rng.integers(*NOISE_GREYS))
        return (level, level, level)

    draw_noise(ImageDraw.Draw(canvas), rng, width, height, grey)
    return canvas


class ColourCaptchaDrawer:
    """Draws two-colour captchas of `colour_key` ("KEEP,DECOY") in one process, with 1 to
    `most_decoys` decoy characters (the spec's --length) in each."""

    def __init__(self, charset: str, colour_key: str, most_decoys: int):
        self.charset, self.most_decoys = charset, max(1, most_decoys)
        self.keep, self.decoy = parse_pair(colour_key)
        self.fonts = distinct_fonts(charset)
        self.rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))

    def labels(self, min_length: int, max_length: int, count: int) -> list[str]:
        lengths = self.rng.integers(min_length, max_length + 1, size=count)
        return ["".join(self.rng.choice(list(self.charset), size=int(n))) for n in lengths]

    def image(self, label: str, size: tuple[int, int]) -> Image.Image:
        decoys = "".join(self.rng.choice(list(self.charset), size=int(self.rng.integers(1, self.most_decoys + 1))))
        return draw_keyed(label, decoys, self.rng, self.fonts, self.keep, self.decoy, size)
