"""Training and reading throughput of model variants, side by side in one process.

    python benchmarks/throughput.py                      # default model, heads, XLA, bfloat16
    python benchmarks/throughput.py --variants default   # just the default

Each variant trains on random uint8 images of the default captcha (160 x 60 grey, 6 of 62)
for --epochs short epochs; the best epoch after the first (compilation) is reported, as
images per second, with its ratio to the default. Timings are noisy on shared machines:
compare ratios from one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np

import caocrvfy  # noqa: F401
from caocrvfy.model_enhanced import build_model, compile_model
from caocrvfy.pipeline import encode_targets

VARIANTS = {
    "default": ({}, {}),
    "softmax-head": ({"head": "softmax"}, {}),
    "sigmoid-head": ({"head": "sigmoid"}, {}),
    "conv-sequence": ({"sequence": "conv"}, {}),
    "patch-stem": ({"stem": "patch"}, {}),
    "xla": ({}, {"jit_compile": True}),
    "bfloat16": ({}, {"policy": "mixed_bfloat16"}),
    "gpu-size": ({"filters": (64, 128, 192, 256), "dense_units": 256, "rnn_units": 192}, {}),
}


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def measure(name: str, images: int, epochs: int, batch_size: int) -> dict:
    build_kwargs, options = VARIANTS[name]
    keras.mixed_precision.set_global_policy(options.get("policy", "float32"))
    model = build_model(**build_kwargs)
    compile_model(model, jit_compile=options.get("jit_compile", False))
    head = build_kwargs.get("head", "ctc")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 60, 160, 1), dtype=np.uint8)
    y = np.asarray(encode_targets(rng.integers(1, 63, (images, 6)).astype(np.int32), head, 62))
    timer = _EpochTimer()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[timer])
    train_rate = images / min(timer.seconds[1:])
    model.predict(x[:batch_size], verbose=0)
    start = time.perf_counter()
    model.predict(x, batch_size=256, verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    return {"variant": name, "params": model.count_params(), "train_images_per_s": train_rate,
            "predict_images_per_s": images / (time.perf_counter() - start)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: all)")
    p.add_argument("--images", type=int, default=1536, help="images per epoch (default 1536)")
    p.add_argument("--epochs", type=int, default=4, help="epochs, the first one not counted (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="(default 64)")
    args = p.parse_args()
    rows = [measure(v, args.images, args.epochs, args.batch_size) for v in args.variants.split(",")]
    base = next((r for r in rows if r["variant"] == "default"), rows[0])
    print("| variant | parameters | train images/s | vs default | predict images/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['variant']} | {r['params']:,} | {r['train_images_per_s']:.0f} | "
              f"{r['train_images_per_s'] / base['train_images_per_s']:.2f}x | {r['predict_images_per_s']:.0f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
