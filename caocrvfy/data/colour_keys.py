"""Colour keys: "type the red characters". Only the pixels of one colour count.

    key = ColourKey.parse("red")          # or "#c81e1e", "#c81e1e:40"
    key.mask(image)                       # "L": the red pixels black, all others white

A named colour matches by hue, so that dark and light shades of it both count: a pixel is of
the colour when its hue is within `HUE_WINDOW` degrees of the name's, its saturation at least
`MIN_SATURATION` and its value (brightness) at least `MIN_VALUE`; "black" is any pixel whose
value is at most `DARK_VALUE`. `#RRGGBB[:TOLERANCE]` matches by RGB distance (0-255 per
channel) of at most TOLERANCE, `DEFAULT_TOLERANCE` when none is given. Each rule fades out over
a short edge beyond its bound instead of stopping dead, so the anti-aliased rims of the
characters come out grey, as text does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from caocrvfy.errors import DataError

NAMED_HUES = {"red": 0.0, "orange": 30.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0,
              "purple": 285.0}  # degrees
DARK_NAMES = ("black",)
HUE_WINDOW = 30.0  # degrees either side of a named colour's hue
HUE_EDGE = 10.0  # degrees beyond the window over which a match fades to none
MIN_SATURATION, SATURATION_EDGE = 0.35, 0.15  # paler pixels (white, grey, the rims of text) fade out
MIN_VALUE, VALUE_EDGE = 0.25, 0.10  # darker pixels have no hue to speak of
DARK_VALUE, DARK_EDGE = 0.30, 0.15  # "black": value at most this, whatever the hue
DEFAULT_TOLERANCE = 60.0  # RGB distance of a #RRGGBB key without :TOLERANCE
RGB_EDGE = 20.0  # RGB distance beyond the tolerance over which a match fades to none
MAX_DISTANCE = math.sqrt(3) * 255  # black to white
# What `sample` draws: colours a key matches fully, varied by a few tens of levels per channel.
SAMPLE_HUE, SAMPLE_SATURATION, SAMPLE_VALUE, SAMPLE_DARK = 12.0, (0.7, 1.0), (0.55, 0.9), 0.12
NO_KEY = "none"  # the option value that turns a model's key off


def _ramp(x: np.ndarray, full: float, none: float) -> np.ndarray:
    """1 at or beyond `full`, 0 at or beyond `none`, linear between."""
    return np.clip((x - none) / (full - none), 0.0, 1.0)


def hsv(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in [0, 1] of RGB pixels (..., 3) in 0-255."""
    rgb = np.asarray(pixels, np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top, chroma = rgb.max(-1), rgb.max(-1) - rgb.min(-1)
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(top == r, ((g - b) / safe) % 6.0, np.where(top == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    saturation = np.where(top > 0, chroma / np.maximum(top, 1e-6), 0.0)
    return hue * 60.0, saturation, top


@dataclass(frozen=True)
class ColourKey:
    """One colour whose pixels count: `kind` "hue" (a named colour, `hue` degrees), "dark"
    (black) or "rgb" (`rgb` within `tolerance`). `text` is how it was given, saved as such."""

    text: str
    kind: str
    hue: float = 0.0
    rgb: tuple[int, int, int] = (0, 0, 0)
    tolerance: float = DEFAULT_TOLERANCE

    @classmethod
    def parse(cls, text: str) -> "ColourKey":
        """A key from a colour name or #RRGGBB[:TOLERANCE]; DataError for anything else."""
        given = str(text).strip().lower()
        if given in NAMED_HUES:
            return cls(given, "hue", hue=NAMED_HUES[given])
        if given in DARK_NAMES:
            return cls(given, "dark")
        colour, _, tolerance = given.partition(":")
        names = ", ".join([*NAMED_HUES, *DARK_NAMES])
        if len(colour) != 7 or colour[0] != "#" or any(c not in "0123456789abcdef" for c in colour[1:]):
            raise DataError(f"colour {text!r} is not a colour key: give one of {names}, or #RRGGBB with an "
                            f"optional :TOLERANCE (RGB distance, default {DEFAULT_TOLERANCE:g}), e.g. #c81e1e:40.")
        try:
            tol = float(tolerance) if tolerance else DEFAULT_TOLERANCE
        except ValueError:
            tol = -1.0
        if not 0 <= tol <= MAX_DISTANCE:  # NaN too
            raise DataError(f"colour {text!r} has tolerance {tolerance!r}: give an RGB distance from 0 to "
                            f"{MAX_DISTANCE:.0f} after the colon, e.g. {colour}:{DEFAULT_TOLERANCE:g}.")
        rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        return cls(given, "rgb", rgb=rgb, tolerance=tol)

    def __str__(self) -> str:
        return self.text

    def match(self, pixels: np.ndarray) -> np.ndarray:
        """How much each RGB pixel (..., 3) in 0-255 is of this colour: 1 fully, 0 not at all."""
        if self.kind == "rgb":
            distance = np.linalg.norm(np.asarray(pixels, np.float32) - np.asarray(self.rgb, np.float32), axis=-1)
            return _ramp(-distance, -self.tolerance, -self.tolerance - RGB_EDGE)
        hue, saturation, value = hsv(pixels)
        if self.kind == "dark":
            return _ramp(-value, -DARK_VALUE, -DARK_VALUE - DARK_EDGE)
        off = np.abs((hue - self.hue + 180.0) % 360.0 - 180.0)
        return (_ramp(-off, -HUE_WINDOW, -HUE_WINDOW - HUE_EDGE)
                * _ramp(saturation, MIN_SATURATION, MIN_SATURATION - SATURATION_EDGE)
                * _ramp(value, MIN_VALUE, MIN_VALUE - VALUE_EDGE))

    def mask(self, image: Image.Image) -> Image.Image:
        """The image as "L" of the same size: this colour's pixels black, all others white,
        partial matches grey: black text on white for any grey reader."""
        strength = self.match(np.asarray(image.convert("RGB")))
        return Image.fromarray(np.round(255.0 * (1.0 - strength)).astype(np.uint8), "L")

    def sample(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """A random colour this key matches fully: the shades a generator draws in."""
        if self.kind == "rgb":
            spread = int(self.tolerance / (2 * math.sqrt(3)))  # within half the tolerance
            jitter = rng.integers(-spread, spread + 1, 3) if spread else np.zeros(3, int)
            return tuple(int(c) for c in np.clip(np.asarray(self.rgb) + jitter, 0, 255))
        if self.kind == "dark":
            hue, saturation, value = rng.uniform(0, 360), rng.uniform(0, 1), rng.uniform(0, SAMPLE_DARK)
        else:
            hue = (self.hue + rng.uniform(-SAMPLE_HUE, SAMPLE_HUE)) % 360
            saturation, value = rng.uniform(*SAMPLE_SATURATION), rng.uniform(*SAMPLE_VALUE)
        return _rgb_of(hue, saturation, value)


def _rgb_of(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    sector, within = divmod(hue / 60.0, 1.0)
    p, q, t = value * (1 - saturation), value * (1 - saturation * within), value * (1 - saturation * (1 - within))
    rgb = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][int(sector) % 6]
    return tuple(round(c * 255) for c in rgb)


def optional_key(text: ColourKey | str | None) -> ColourKey | None:
    """A key option's value: None for none given or `none`, else the key (parsed from text)."""
    if isinstance(text, ColourKey):
        return text
    if text is None or str(text).strip().lower() in ("", NO_KEY):
        return None
    return ColourKey.parse(text)


def parse_pair(text: str) -> tuple[ColourKey, ColourKey]:
    """KEEP,DECOY of a two-colour generator; DataError when malformed or when the two colours are
    close enough for one key to match the other's shades."""
    keep, comma, decoy = str(text).partition(",")
    if not comma or not keep.strip() or not decoy.strip() or "," in decoy:
        raise DataError(f"colour key {text!r} is not KEEP,DECOY: give the colour to read and the decoys' colour, "
                        "e.g. red,blue.")
    keep_key, decoy_key = ColourKey.parse(keep), ColourKey.parse(decoy)
    rng = np.random.default_rng(0)  # a fixed set of shades, so the answer never changes

    def shades(key: ColourKey) -> np.ndarray:
        return np.array([key.sample(rng) for _ in range(256)], np.float32)

    if keep_key.match(shades(decoy_key)).max() > 0 or decoy_key.match(shades(keep_key)).max() > 0:
        raise DataError(f"colour key {text!r}: {keep_key} and {decoy_key} are too close for the mask to tell apart; "
                        "choose colours further apart, e.g. red,blue.")
    return keep_key, decoy_key
