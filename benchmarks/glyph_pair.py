"""How well can two look-alike characters be told apart at all, as the captcha library draws them?

    python benchmarks/glyph_pair.py --pair 0O --train 40000 --test 10000 --epochs 12
    python benchmarks/glyph_pair.py --pair 0O --model models/captcha-4x36 --data /tmp/fresh-4x36

The library (0.7.1) draws each character on its own: the glyph is cut to its ink, rotated up to
30 degrees, warped, and stretched into the character's text box, which in DroidSansMono is the
same box for `0` and `O` (and for `o`, whose box is as tall as a capital's). So the two differ
only in stroke thickness and contour, not in width or height. This script draws single
characters with the library's public `ImageCaptcha.create_captcha_image`, one character on a
canvas of CANVAS (64 x 40) with no word space before it, in the random colours `generate_image`
picks, then applies the library's final SMOOTH filter; there is no noise, no neighbour and no
squeeze (the largest box of the pair's characters at the default font sizes is 62 x 35, so the
text always fits). It trains a small CNN to tell the two apart. Its error on fresh glyphs is
what a reader can hope for on these two characters with the glyph alone: the same characters
inside a captcha are harder (noise, overlap, squeeze), so a full reader's error on them is
expected at or above it. (Until 2026-12-01 the glyphs came from the library's private
`_draw_character` and were pasted centred; `create_captcha_image` pastes the text box 10% of its
width from the left edge instead, so a glyph now sits up to 5 pixels left of the centre. The
glyph itself, its colours and the paste mask are the library's, as before.)

(A mode that cut the glyphs from whole captchas, `--in-captcha`, was removed on 2026-12-01: it
needed a copy of the library's drawing code and its private `_draw_character` to know where each
character was pasted. Its figures, 7.68% and 3.45%, stay in docs/notes/2026-11-23-zero-vs-o.md.)

With `--model` and `--data` it also measures a trained reader on captchas: among the characters
that are one of the pair, how often it reads the other one. The first character of `--pair` is
the negative class. The figures are printed and written to
benchmarks/results/glyph-pair-PAIR-DATE.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import secrets
import time

import numpy as np

import caocrvfy  # noqa: F401  (first: it sets TensorFlow's CPU options before TensorFlow loads)
import common

CANVAS = (64, 40)  # height, width: the largest glyph box of 0, O, o, 1, l, I at the default font sizes is 62 x 35


@functools.lru_cache(maxsize=1)
def glyph_captcha():
    """This process's ImageCaptcha for single glyphs: a canvas of CANVAS, the default fonts, and
    no word space before the character (`word_space_probability` is the library's own setting)."""
    from captcha.image import ImageCaptcha

    generator = ImageCaptcha(width=CANVAS[1], height=CANVAS[0])
    generator.word_space_probability = 1.0  # a space is drawn when a random number in [0, 1) exceeds it
    return generator


def draw_glyphs(job: tuple[str, int]) -> np.ndarray:
    """`count` single glyphs of `char` (in a drawing_pool worker)."""
    from captcha.image import random_color
    from PIL import ImageFilter

    char, count = job
    generator = glyph_captcha()
    out = np.empty((count, *CANVAS), np.uint8)
    for i in range(count):
        # Colours as `generate_image` picks them: the paste mask comes from the text colour's brightness.
        color = random_color(10, 200, secrets.randbelow(36) + 220)
        image = generator.create_captcha_image(char, color, random_color(238, 255))
        out[i] = np.asarray(image.filter(ImageFilter.SMOOTH).convert("L"))
    return out


def draw_pair(pair: str, count: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """`count` glyphs of each character of `pair`, shuffled, with labels 0 and 1."""
    from caocrvfy.data.synthetic import CaptchaSpec, drawing_pool

    chunk = 500
    jobs = [(c, min(chunk, count - start)) for c in pair for start in range(0, count, chunk)]
    with drawing_pool(workers, CaptchaSpec(pair, 1, CANVAS[1], CANVAS[0])) as pool:
        parts = pool.map(draw_glyphs, jobs)
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


def bound(pair: str, train: int, test: int, epochs: int, filters: tuple[int, ...]) -> dict:
    import keras

    start = time.perf_counter()
    x, y = draw_pair(pair, train + test)
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
    return {"pair": pair, "train_per_char": train, "test_per_char": test, "epochs": epochs,
            "filters": list(filters), "parameters": model.count_params(), "errors": errors,
            "test_glyphs": len(y_test), "glyph_error": errors / len(y_test), "glyph_error_95": [low, high],
            "draw_seconds": round(drawn, 1), "total_seconds": round(time.perf_counter() - start, 1)}


def reader_pair_error(pair: str, model: str, data: str) -> dict:
    """A trained reader on captchas: among characters that are one of the pair, the share read
    as the other one (positions compared where the lengths agree)."""
    from caocrvfy.data.folders import read_folder
    from caocrvfy.inference import Predictor

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
    p.add_argument("--model", help="also measure this reader on --data")
    p.add_argument("--data", help="folder of fresh labelled captchas for --model")
    p.add_argument("--skip-bound", action="store_true", help="only measure --model")
    common.add_results_option(p)
    args = p.parse_args()
    if len(args.pair) != 2:
        p.error("--pair takes exactly two characters, e.g. 0O")
    result = {}
    if not args.skip_bound:
        filters = tuple(int(v) for v in args.filters.split(","))
        result["glyphs"] = bound(args.pair, args.train, args.test, args.epochs, filters)
    if args.model and args.data:
        result["reader"] = reader_pair_error(args.pair, args.model, args.data)
    print(json.dumps(result, indent=2))
    common.write_result(f"glyph-pair-{common.slug(args.pair)}", result, args.results_dir)


if __name__ == "__main__":
    main()
