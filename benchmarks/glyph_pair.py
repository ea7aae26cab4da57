"""How well can two look-alike characters be told apart at all, as the captcha library draws them?

    python benchmarks/glyph_pair.py --pair 0O --train 40000 --test 10000 --epochs 12
    python benchmarks/glyph_pair.py --pair 0O --in-captcha 0-9A-Z
    python benchmarks/glyph_pair.py --pair 0O --model models/captcha-4x36 --data /tmp/fresh-4x36

The library (0.7.1) draws each character on its own: the glyph is cut to its ink, rotated up to
30 degrees, warped, and stretched into the character's text box, which in DroidSansMono is the
same box for `0` and `O` (and for `o`, whose box is as tall as a capital's). So the two differ
only in stroke thickness and contour, not in width or height. This script draws single
characters with the library's own `_draw_character`, in its random colours, centred on a canvas, with
the library's final SMOOTH filter but without noise, neighbours or the squeeze that fits a wide
text into the image, and trains a small CNN to tell the two apart. Its error on fresh glyphs is
what a reader can hope for on these two characters with the glyph alone: the same characters
inside a captcha are harder (noise, overlap, squeeze), so a full reader's error on them is
expected at or above it.

With `--in-captcha` the glyphs are cut from whole captchas instead (the library's own drawing,
noise, neighbours, word spaces and squeeze; the other characters never one of the pair): a
window as tall as the captcha and CANVAS_IN_CAPTCHA_WIDTH (48) pixels wide, centred where the library pasted the
character. That is what a reader sees of the character once it knows where it is. (The copy of
the library's drawing was checked against it: with `secrets` replaced by one seeded generator,
50 of 50 captchas came out pixel for pixel the same as `ImageCaptcha.generate_image`'s.)

With `--model` and `--data` it also measures a trained reader on captchas: among the characters
that are one of the pair, how often it reads the other one. The first character of `--pair` is
the negative class.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

import caocrvfy  # noqa: F401  (first: it sets TensorFlow's CPU options before TensorFlow loads)

CANVAS = (64, 40)  # height, width: the largest glyph box at the default font sizes is 62 x 35
CANVAS_IN_CAPTCHA_WIDTH = 48


def _generator():
    """The worker's ImageCaptcha, made by `caocrvfy.data.drawing_pool`'s initializer."""
    from caocrvfy import data

    return data._worker_generator


def _draw(job: tuple[str, int]) -> np.ndarray:
    import secrets

    from captcha.image import random_color
    from PIL import Image, ImageDraw, ImageFilter

    char, count = job
    generator = _generator()
    out = np.empty((count, *CANVAS), np.uint8)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for i in range(count):
        # Colours as the library picks them: the paste mask comes from the text colour's brightness.
        glyph = generator._draw_character(char, scratch, random_color(10, 200, secrets.randbelow(36) + 220))
        canvas = Image.new("RGB", CANVAS[::-1], random_color(238, 255))
        w, h = glyph.size
        mask = glyph.convert("L").point(generator.lookup_table)
        canvas.paste(glyph, ((CANVAS[1] - w) // 2, (CANVAS[0] - h) // 2), mask)
        out[i] = np.asarray(canvas.filter(ImageFilter.SMOOTH).convert("L"))
    return out


def _captcha_with_places(chars: str) -> tuple[object, list[tuple[float, float]]]:
    """The library's `generate_image` (0.7.1), also returning each character's left and right
    edge in the final image: `create_captcha_image` is followed line by line, keeping the offsets
    it pastes at."""
    import secrets

    from captcha.image import SMOOTH, random_color
    from PIL import Image, ImageDraw

    g = _generator()
    background, color = random_color(238, 255), random_color(10, 200, secrets.randbelow(36) + 220)
    image = Image.new("RGB", (g._width, g._height), background)
    draw = ImageDraw.Draw(image)
    images, is_char = [], []
    for c in chars:
        if secrets.randbits(32) / (2**32) > g.word_space_probability:
            images.append(g._draw_character(" ", draw, color))
            is_char.append(False)
        images.append(g._draw_character(c, draw, color))
        is_char.append(True)
    text_width = sum(im.size[0] for im in images)
    width = max(text_width, g._width)
    image = image.resize((width, g._height))
    average = int(text_width / len(chars))
    rand = int(g.word_offset_dx * average)
    offset = int(average * 0.1)
    places = []
    for im, char in zip(images, is_char):
        w, h = im.size
        image.paste(im, (offset, int((g._height - h) / 2)), im.convert("L").point(g.lookup_table))
        if char:
            places.append((offset, offset + w))
        offset = offset + w + (-secrets.randbelow(rand + 1))
    scale = 1.0
    if width > g._width:
        image = image.resize((g._width, g._height))
        scale = g._width / width
    g.create_noise_dots(image, color)
    g.create_noise_curve(image, color)
    return image.filter(SMOOTH), [(left * scale, right * scale) for left, right in places]


def _draw_in_captcha(job: tuple[str, int, str, int]) -> np.ndarray:
    """`count` windows around `char` at a random place in a captcha of `length` characters whose
    others are drawn from `others`."""
    import secrets

    char, count, others, length = job
    half = CANVAS_IN_CAPTCHA_WIDTH // 2
    out = np.empty((count, _generator()._height, CANVAS_IN_CAPTCHA_WIDTH), np.uint8)
    for i in range(count):
        text = [secrets.choice(others) for _ in range(length)]
        place = secrets.randbelow(length)
        text[place] = char
        image, places = _captcha_with_places("".join(text))
        pixels = np.pad(np.asarray(image.convert("L")), ((0, 0), (half, half)), mode="edge")
        centre = round(sum(places[place]) / 2) + half
        out[i] = pixels[:, centre - half: centre + half]
    return out


def draw_pair(pair: str, count: int, width: int, height: int, workers: int = 2, in_captcha: str = "",
              length: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """`count` glyphs of each character of `pair`, shuffled, with labels 0 and 1. With
    `in_captcha` (the captcha's character set), cut from captchas of `length` characters."""
    from caocrvfy.data import CaptchaSpec, drawing_pool

    chunk = 500
    jobs = [(c, min(chunk, count - start)) for c in pair for start in range(0, count, chunk)]
    draw = _draw
    if in_captcha:
        others = "".join(c for c in in_captcha if c not in pair)
        jobs = [(c, n, others, length) for c, n in jobs]
        draw = _draw_in_captcha
    with drawing_pool(workers, CaptchaSpec(in_captcha or pair, length, width, height)) as pool:
        parts = pool.map(draw, jobs)
    images = np.concatenate(parts)[..., None]
    labels = np.concatenate([np.full(job[1], pair.index(job[0]), np.float32) for job in jobs])
    order = np.random.default_rng().permutation(len(labels))
    return images[order], labels[order]


def glyph_classifier(filters: tuple[int, ...], shape: tuple[int, int] = CANVAS):
    import keras
    from keras import layers

    inputs = keras.Input((*shape, 1), dtype="uint8")
    x = layers.Rescaling(1 / 255)(inputs)
    for f in filters:
        x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


def wilson(errors: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), centre + half


def bound(pair: str, train: int, test: int, epochs: int, filters: tuple[int, ...], width: int, height: int,
          in_captcha: str = "", length: int = 4) -> dict:
    import keras

    start = time.perf_counter()
    x, y = draw_pair(pair, train + test, width, height, in_captcha=in_captcha, length=length)
    drawn = time.perf_counter() - start
    x_train, y_train, x_test, y_test = x[: 2 * train], y[: 2 * train], x[2 * train:], y[2 * train:]
    model = glyph_classifier(filters, x.shape[1:3])
    steps = epochs * math.ceil(len(x_train) / 128)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=0.003,
                                                                               warmup_steps=steps // 20)),
                  "binary_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=128, epochs=epochs, validation_data=(x_test, y_test), verbose=2)
    p = model.predict(x_test, batch_size=512, verbose=0)[:, 0]
    errors = int(((p > 0.5) != (y_test > 0.5)).sum())
    low, high = wilson(errors, len(y_test))
    return {"pair": pair, "in_captcha": in_captcha or None, "train_per_char": train, "test_per_char": test, "epochs": epochs,
            "filters": list(filters), "parameters": model.count_params(), "errors": errors,
            "test_glyphs": len(y_test), "glyph_error": errors / len(y_test), "glyph_error_95": [low, high],
            "draw_seconds": round(drawn, 1), "total_seconds": round(time.perf_counter() - start, 1)}


def reader_pair_error(pair: str, model: str, data: str) -> dict:
    """A trained reader on captchas: among characters that are one of the pair, the share read
    as the other one (positions compared where the lengths agree)."""
    from caocrvfy.data import read_folder
    from caocrvfy.predict import Predictor

    reader = Predictor.load(model)
    found = read_folder(data, charset=reader.charset)
    truth = dict(zip(found.paths, found.labels))
    seen = swapped = strings = 0
    for path, pred, _ in reader.predict_files(found.paths):
        if pred is None or len(pred.text) != len(truth[path]):
            continue
        strings += 1
        for a, b in zip(truth[path], pred.text):
            if a in pair:
                seen += 1
                swapped += b in pair and b != a
    low, high = wilson(swapped, max(seen, 1))
    return {"model": model, "data": data, "captchas": strings, "pair_characters": seen, "read_as_other": swapped,
            "pair_error": swapped / max(seen, 1), "pair_error_95": [low, high]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="0O", help="two characters (default 0O)")
    p.add_argument("--train", type=int, default=40_000, help="training glyphs per character (default 40000)")
    p.add_argument("--test", type=int, default=10_000, help="fresh test glyphs per character (default 10000)")
    p.add_argument("--epochs", type=int, default=12, help="(default 12)")
    p.add_argument("--filters", default="16,32,64", help="classifier widths (default 16,32,64)")
    p.add_argument("--width", type=int, default=128, help="captcha width, for the library's settings (default 128)")
    p.add_argument("--height", type=int, default=64, help="captcha height (default 64)")
    p.add_argument("--in-captcha", metavar="CHARSET",
                   help="cut the glyphs from captchas of this character set (e.g. 0-9A-Z) instead of drawing them alone")
    p.add_argument("--length", type=int, default=4, help="characters per captcha with --in-captcha (default 4)")
    p.add_argument("--model", help="also measure this reader on --data")
    p.add_argument("--data", help="folder of fresh labelled captchas for --model")
    p.add_argument("--skip-bound", action="store_true", help="only measure --model")
    args = p.parse_args()
    if len(args.pair) != 2:
        p.error("--pair takes exactly two characters, e.g. 0O")
    result = {}
    if not args.skip_bound:
        filters = tuple(int(v) for v in args.filters.split(","))
        charset = ""
        if args.in_captcha:
            from caocrvfy.charset import parse_charset

            charset = parse_charset(args.in_captcha)
        result["glyphs"] = bound(args.pair, args.train, args.test, args.epochs, filters, args.width, args.height,
                                 charset, args.length)
    if args.model and args.data:
        result["reader"] = reader_pair_error(args.pair, args.model, args.data)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
