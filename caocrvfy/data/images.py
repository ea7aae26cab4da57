"""Decoding images to the uint8 arrays a model reads.

Images are decoded and resized once with Pillow; scaling to [0, 1] happens inside the model,
so that training, prediction, export and serving share one preprocessing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def open_image(source: str | Path | bytes, height: int, width: int, channels: int) -> np.ndarray:
    """Decodes any Pillow-readable image (first frame) to uint8 (height, width, channels)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fh) as im:
        im.seek(0)
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im.alpha_composite(rgba)
        im = im.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).reshape(height, width, channels)

