"""Decoding images to the uint8 arrays a model reads.

Images are decoded and resized once with Pillow; scaling to [0, 1] happens inside the model,
so that training, prediction, export and serving share one preprocessing.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from caocrvfy.data.colour_keys import ColourKey

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
SMALLEST_SIDE = 8  # pixels; a smaller image holds no readable text
ASPECT_TOLERANCE = 2.0  # an image whose width/height differs from the model's by more than this factor is warned about


def to_8_bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images (modes I;16*, I, F) as 8-bit "L", scaled to 0-255; Pillow's
    own conversion clips them at 255, so a 16-bit PNG would read as all white."""
    a = np.asarray(im, dtype=np.float64)
    top = float(a.max()) if a.size else 0.0
    if im.mode.startswith("I;16") or (im.mode == "I" and top > 255):
        a = a * (255.0 / 65535.0) if top <= 65535 else (a - a.min()) * (255.0 / max(top - a.min(), 1e-12))
    elif im.mode == "F" and top <= 1.0:
        a = a * 255.0
    elif im.mode == "F" and top > 255:
        a = (a - a.min()) * (255.0 / max(top - a.min(), 1e-12))
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")


def size_warning(size: tuple[int, int], height: int, width: int) -> str | None:
    """Why an image of `size` (width, height) may be read wrong by a model of height x width, or None."""
    w, h = size
    if min(w, h) < SMALLEST_SIDE:
        return f"is only {w}x{h} pixels: too small to hold readable text"
    ratio, model_ratio = w / h, width / height
    if max(ratio / model_ratio, model_ratio / ratio) > ASPECT_TOLERANCE:
        return (f"is {w}x{h} (width/height {ratio:.2f}), far from the model's {width}x{height} "
                f"({model_ratio:.2f}): it is stretched to fit and may read wrong")
    return None


def model_input(im: Image.Image, height: int, width: int, channels: int,
                keep_colour: ColourKey | None = None) -> np.ndarray:
    """A decoded image as the model's uint8 (height, width, channels): masked to `keep_colour`
    at its own size (so the mask sees every pixel), then grey or RGB, then resized."""
    if keep_colour is not None:
        im = keep_colour.mask(im)
    im = im.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).reshape(height, width, channels)


def open_image(source: str | Path | bytes, height: int, width: int, channels: int, name: str | None = None,
               keep_colour: ColourKey | None = None) -> np.ndarray:
    """Decodes any Pillow-readable image (first frame) to uint8 (height, width, channels).
    With `name` (what to call the image when reading it with a model), an image far smaller
    than text needs, or far from the model's aspect ratio, is read but logged as a warning.
    With `keep_colour`, only the pixels of that colour stay, black on white (`ColourKey.mask`)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fh) as im:
        im.seek(0)
        im.load()
        warning = size_warning(im.size, height, width) if name else None
        if warning:
            log.warning(f"{name} {warning}")
        if im.mode.startswith("I") or im.mode == "F":
            im = to_8_bit(im)
        elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im.alpha_composite(rgba)
        return model_input(im, height, width, channels, keep_colour)

