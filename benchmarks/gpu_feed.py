"""How fast the streaming input pipeline feeds training, against the model's own rate.

    KERAS_BACKEND=jax python benchmarks/gpu_feed.py --workers 14 --steps 200 --rounds 4
    KERAS_BACKEND=jax python benchmarks/gpu_feed.py --model default --steps-per-execution 8

Synthetic captchas (6 of 0-9a-zA-Z, 160 x 60) are drawn by --workers processes into the ring
buffer (`caocrvfy.data.synthetic.SyntheticStream`, what `--synthetic stream` trains from) while
these variants take turns, one epoch of --steps batches each:
- `arrays`: in-memory images (a snapshot of the buffer): what the model takes;
- `stream, batch-end hook`: the stream, plus a callback with a batch-end hook (what
  `TimeLimit` had before 2026-11-23): Keras then converts every step's logs to numbers;
- `stream`: the stream (`caocrvfy.data.pipeline.StreamBatches`), with the training's own callbacks;
- with --steps-per-execution N, arrays and stream again with N steps per compiled call
  (training takes 8 on a GPU by itself).
The first round (compilation) is not counted; the best later epoch is reported in images/s.
The table is printed and the rows written to benchmarks/results/gpu-feed-DATE.json. (Several
feeding threads, the removed `--feed-threads`, were measured on 2026-11-23:
docs/notes/2026-11-23-gpu-training-rate.md.)
"""

from __future__ import annotations

import argparse
import time

import caocrvfy  # noqa: F401  (first: it sets TensorFlow's CPU options before TensorFlow loads)
import keras
import numpy as np

import common
from caocrvfy.data.pipeline import StreamBatches
from caocrvfy.data.synthetic import CaptchaSpec, SyntheticStream
from caocrvfy.model_enhanced import build_model
from caocrvfy.training import callbacks as cb
from caocrvfy.training.compile import compile_model
from caocrvfy.training.config import STREAM_MIN_CAPACITY
from caocrvfy.training.datasets import stream_workers

SIZES = {"gpu-size": {"filters": (64, 128, 192, 256), "dense_units": 256, "rnn_units": 192, "column_stride": 4},
         "default": {}}


class BatchEndHook(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SIZES), default="gpu-size", help="(default gpu-size)")
    p.add_argument("--workers", type=int, default=stream_workers(),
                   help="drawing processes (default: every core but two, as training)")
    p.add_argument("--steps", type=int, default=200, help="batches per epoch (default 200)")
    p.add_argument("--batch-size", type=int, default=256, help="(default 256)")
    p.add_argument("--rounds", type=int, default=4, help="epochs per variant, the first not counted (default 4)")
    p.add_argument("--capacity", type=int, default=STREAM_MIN_CAPACITY,
                   help=f"ring buffer size (default {STREAM_MIN_CAPACITY}, training's least)")
    p.add_argument("--steps-per-execution", type=int, default=0,
                   help="also time arrays and stream with this many steps per compiled call")
    common.add_results_option(p)
    args = p.parse_args()

    spec = CaptchaSpec()
    stream = SyntheticStream(spec, 1, args.capacity, args.workers, initial=min(20_000, args.capacity))
    stream.wait_ready()
    shape = dict(charset=spec.charset, max_length=spec.length, height=spec.height, width=spec.width)
    model = build_model(**shape, **SIZES[args.model])
    jit = keras.backend.backend() != "tensorflow"
    compile_model(model, 0.001, jit_compile=jit)
    grouped = None
    if args.steps_per_execution:
        grouped = build_model(**shape, **SIZES[args.model])
        compile_model(grouped, 0.001, jit_compile=jit, steps_per_execution=args.steps_per_execution)
    x, y = stream.sample(np.random.default_rng(0), args.steps * args.batch_size)
    classes = len(spec.charset)

    def training_callbacks():
        return [cb.LinearWarmup(0.001, 0), cb.CosineToBudget(0.001, 1e-5, 0, 100, args.steps, None),
                cb.TimeLimit(600)]

    def batches():
        return StreamBatches(stream, "ctc", classes, args.batch_size, args.steps)

    variants = {
        "arrays": lambda: (model, x, y, []),
        "stream, batch-end hook": lambda: (model, batches(), None, training_callbacks() + [BatchEndHook()]),
        "stream": lambda: (model, batches(), None, training_callbacks()),
    }
    if grouped is not None:
        n = args.steps_per_execution
        variants[f"arrays, {n} steps per call"] = lambda: (grouped, x, y, [])
        variants[f"stream, {n} steps per call"] = lambda: (grouped, batches(), None, training_callbacks())
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    written = stream.written
    start_all = time.perf_counter()
    try:
        for _ in range(args.rounds):
            for name, make in variants.items():
                trained, inputs, targets, callbacks = make()
                start = time.perf_counter()
                trained.fit(inputs, targets, batch_size=args.batch_size if targets is not None else None, epochs=1,
                            callbacks=callbacks, verbose=0, shuffle=False)
                seconds[name].append(time.perf_counter() - start)
        drawn = (stream.written - written) / (time.perf_counter() - start_all)
    finally:
        stream.close()
    images = args.steps * args.batch_size
    base = images / min(seconds["arrays"][1:])
    print(f"backend {keras.backend.backend()}, devices {keras.distribution.list_devices()}, model {args.model} "
          f"({model.count_params():,} parameters), batch {args.batch_size}, {args.steps} steps per epoch, "
          f"{args.workers} drawing processes adding {drawn:,.0f} captchas/s")
    print("| variant | train images/s | vs arrays |")
    print("| --- | ---: | ---: |")
    rows = []
    for name, secs in seconds.items():
        rate = images / min(secs[1:])
        rows.append({"variant": name, "images_per_s": rate, "seconds": secs})
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")
    common.write_result("gpu-feed", {"backend": keras.backend.backend(), "model": args.model,
                                     "parameters": model.count_params(), "batch_size": args.batch_size,
                                     "steps": args.steps, "workers": args.workers, "captchas_per_s_drawn": drawn,
                                     "variants": rows}, args.results_dir)


if __name__ == "__main__":
    main()
