"""Training and reading throughput of model variants, side by side in one process.

    python benchmarks/throughput.py                      # CPU: default model, layouts, heads, bfloat16
    python benchmarks/throughput.py --variants default   # just the default
    KERAS_BACKEND=jax python benchmarks/throughput.py --variants gpu-size,gpu-size-float16 \\
        --batch-size 256 --images 25600                  # a GPU: float32 against mixed float16

Each variant trains on random uint8 images of the default captcha (160 x 60 grey, 6 of 62).
The variants take turns, one epoch each, for --rounds rounds, so that a noisy machine slows
all of them alike; the first round (compilation) is not counted and the best later epoch is
reported, as images per second, with its ratio to the first variant listed. The table is
printed and the rows written to benchmarks/results/throughput-DATE.json.

The layouts the project has since removed (patch stem, 1-D convolutions for the GRU, XLA on
the CPU) were measured on 2026-11-23 (docs/notes/2026-11-23-cpu-training-throughput.md); their
variants are gone with them.
"""

from __future__ import annotations

import argparse
import time

import caocrvfy  # noqa: F401  (first: it sets TensorFlow's CPU options before TensorFlow loads)
import keras
import numpy as np

import common
from caocrvfy.data.pipeline import encode_targets
from caocrvfy.model_enhanced import build_model
from caocrvfy.training.compile import compile_model

GPU_SIZE = {"filters": (64, 128, 192, 256), "dense_units": 256, "rnn_units": 192, "column_stride": 4}
PREVIOUS_DEFAULT = {"filters": (32, 48, 64, 96), "column_stride": 4}  # the default before 2026-11-23 07:00
VARIANTS = {  # name: (build_model arguments, options)
    "default": ({}, {}),
    "previous-default": (PREVIOUS_DEFAULT, {}),
    "column-stride-4": ({"column_stride": 4}, {}),
    # The steps from the previous default to this one, as measured on 2026-11-23 (BENCHMARKS.md):
    "column-stride-8": ({"filters": (32, 48, 64, 96), "column_stride": 8}, {}),
    "column-stride-8-stem-16": ({"filters": (16, 48, 64, 96), "column_stride": 8}, {}),
    "stem-32": ({"filters": (32, 48, 64, 96)}, {}),
    "softmax-head": ({"head": "softmax"}, {}),
    "sigmoid-head": ({"head": "sigmoid"}, {}),
    # Cheaper pieces of the default, and its training-time augmentation:
    "no-attention": ({"attention": False}, {}),
    "rnn-64": ({"rnn_units": 64}, {}),
    "dense-128": ({"dense_units": 128}, {}),
    "augment": ({"augment": True}, {}),
    # Cheaper stride-4 layouts for the 20-minute CPU budget:
    "s4-rnn-64": ({"column_stride": 4, "rnn_units": 64}, {}),
    "s4-filters-16-32-64-96": ({"column_stride": 4, "filters": (16, 32, 64, 96)}, {}),
    "s4-filters-16-48-48-64": ({"column_stride": 4, "filters": (16, 48, 48, 64)}, {}),
    "s4-no-attention": ({"column_stride": 4, "attention": False}, {}),
    "bfloat16": ({}, {"policy": "mixed_bfloat16"}),
    "gpu-size": (GPU_SIZE, {}),
    "gpu-size-float16": (GPU_SIZE, {"policy": "mixed_float16"}),
}
CPU_VARIANTS = "default,previous-default,column-stride-4,stem-32,softmax-head,sigmoid-head,bfloat16"


def build(name: str) -> keras.Model:
    build_kwargs, options = VARIANTS[name]
    keras.mixed_precision.set_global_policy(options.get("policy", "float32"))
    try:
        model = build_model(**build_kwargs)
        # As in training: XLA on JAX (without jit it runs op by op), not on TensorFlow.
        compile_model(model, jit_compile=keras.backend.backend() != "tensorflow")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=CPU_VARIANTS,
                   help=f"comma-separated NAME or NAME@BATCH (a batch size of its own) from {', '.join(VARIANTS)} "
                        f"(default: {CPU_VARIANTS})")
    p.add_argument("--images", type=int, default=1536, help="images per epoch (default 1536)")
    p.add_argument("--rounds", type=int, default=4, help="epochs per variant, the first not counted (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="(default 64)")
    common.add_results_option(p)
    args = p.parse_args()
    names = args.variants.split(",")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, 60, 160, 1), dtype=np.uint8)
    labels = rng.integers(1, 63, (args.images, 6)).astype(np.int32)
    variant = {name: name.partition("@")[0] for name in names}
    unknown = sorted(set(variant.values()) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    batch = {name: int(name.partition("@")[2] or args.batch_size) for name in names}
    models = {name: build(variant[name]) for name in names}
    targets = {name: np.asarray(encode_targets(labels, VARIANTS[variant[name]][0].get("head", "ctc"), 62))
               for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(x, targets[name], batch_size=batch[name], epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - start)
    rows = []
    for name, model in models.items():
        model.predict(x[: args.batch_size], verbose=0)
        start = time.perf_counter()
        model.predict(x, batch_size=256, verbose=0)
        rows.append({"variant": name, "params": model.count_params(),
                     "train_images_per_s": args.images / min(seconds[name][1:]),
                     "train_images_per_s_median": args.images / float(np.median(seconds[name][1:])),
                     "predict_images_per_s": args.images / (time.perf_counter() - start)})
    base = rows[0]
    print(f"backend {keras.backend.backend()}, devices {keras.distribution.list_devices()}, "
          f"batch {args.batch_size}, {args.images} images per epoch, {args.rounds} rounds")
    print(f"| variant | parameters | train images/s | vs {base['variant']} | predict images/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['variant']} | {r['params']:,} | {r['train_images_per_s']:.0f} | "
              f"{r['train_images_per_s'] / base['train_images_per_s']:.2f}x | {r['predict_images_per_s']:.0f} |")
    common.write_result("throughput", {"backend": keras.backend.backend(), "batch_size": args.batch_size,
                                       "images": args.images, "rounds": args.rounds, "variants": rows},
                        args.results_dir)


if __name__ == "__main__":
    main()
