"""Reading speed, side by side in one process: caocrvfy (Keras, ONNX Runtime, TFLite) and ddddocr.

    python benchmarks/speed_vs_ddddocr.py
    python benchmarks/speed_vs_ddddocr.py --model models/captcha-6x62 --model models/runs/cpu20 --count 1000
    python benchmarks/speed_vs_ddddocr.py --formats tflite,tflite-int8,tflite-int8-full,onnx,onnx-int8-dynamic,onnx-int8-static

Formats: keras, onnx, tflite, and tflite-int8 (`caocrvfy export --int8`); measured here but not
offered by caocrvfy: tflite-int8-full (TFLite's full-integer form, calibrated on 200 fresh
captchas of the model's kind that are not among the read ones), onnx-int8-dynamic and
onnx-int8-static (ONNX Runtime's quantize_dynamic, and quantize_static in QDQ form calibrated on
the same 200). The first row is always the default reader, what `caocrvfy predict` reads
without --model (models/captcha-6x62/model-int8.tflite).

Every reader gets the same PNG files as bytes, so decoding, resizing and turning the outputs
into text are all inside the timings. Single-image latency: one image per call, in turn,
median and 99th percentile. Batch throughput: all images through the reader's batch path
(batches of 256 for caocrvfy; ddddocr has no batch call, so its figure is one call per image).
The readers take turns for --rounds rounds and each keeps its best round, so a noisy machine
slows all of them alike. Full-match is given for context: ddddocr was not trained on these
captchas. The table is printed and the rows written to benchmarks/results/speed-vs-ddddocr-DATE.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common


def single_latencies(read_one, items: list[bytes]) -> list[float]:
    times = []
    for item in items:
        start = time.perf_counter()
        read_one(item)
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def quantised_export(model: str, fmt: str, out: Path, calibration: list) -> Path:
    """The benchmark-only int8 forms, made with the converters' own quantisers."""
    import numpy as np

    from caocrvfy.inference.export import export_model, tflite_converter
    from caocrvfy.locations import resolve_model_path
    from caocrvfy.model_config import read_config
    from caocrvfy.model_enhanced import load_saved_model

    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "tflite-int8-full":
        import tensorflow as tf

        model_path, config_path = resolve_model_path(model)
        converter = tflite_converter(load_saved_model(model_path), read_config(config_path))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        out.write_bytes(converter.convert())
        shutil.copyfile(config_path, out.parent / "config.json")  # what Predictor.load reads beside the file
        return out
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    plain = export_model(model, "onnx", out.parent / "float.onnx")
    if fmt == "onnx-int8-dynamic":
        quantize_dynamic(str(plain), str(out), weight_type=QuantType.QInt8)
        return out

    import onnxruntime

    name = onnxruntime.InferenceSession(str(plain)).get_inputs()[0].name

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: np.ascontiguousarray(image[None])} for image in calibration])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(plain), str(out), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


QUANTISED = ("tflite-int8-full", "onnx-int8-dynamic", "onnx-int8-static")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append",
                   help="caocrvfy model, repeatable (default: the shipped captcha-6x62): a run folder or .keras file "
                        "read in each of --formats, or an exported file read as it is")
    p.add_argument("--formats", default="keras,onnx,tflite,tflite-int8",
                   help=f"from keras, onnx, tflite, tflite-int8, {', '.join(QUANTISED)} (default keras,onnx,tflite,tflite-int8)")
    p.add_argument("--count", type=int, default=1000, help="captchas read (default 1000)")
    p.add_argument("--single", type=int, default=300, help="images timed one at a time per round (default 300)")
    p.add_argument("--rounds", type=int, default=3, help="(default 3)")
    p.add_argument("--folder", type=Path, help="labelled captchas to read (default: fresh ones of the first "
                                                "model's kind, drawn into a temp folder)")
    common.add_results_option(p)
    args = p.parse_args()

    from caocrvfy.data.folders import read_folder
    from caocrvfy.data.synthetic import CaptchaSpec, generate
    from caocrvfy.evaluation.scores import case_folded_full_match, full_match
    from caocrvfy.inference import Predictor
    from caocrvfy.inference.export import export_model
    from caocrvfy.locations import default_model, resolve_model_path
    from caocrvfy.model_config import load_model_config

    models = args.model or [str(default_model())]
    started, host = time.strftime("%Y-%m-%d %H:%M %Z"), common.machine()
    first = load_model_config(resolve_model_path(models[0])[1])
    folder = args.folder
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="caocrvfy-speed-"))
        generate(folder, args.count, CaptchaSpec(first.charset, first.max_length, first.width, first.height))
    found = read_folder(folder)
    paths, labels = found.paths[: args.count], found.labels[: args.count]
    images = [path.read_bytes() for path in paths]
    print(f"{len(images)} captchas from {folder}", flush=True)

    readers = {}
    export_dir = Path(tempfile.mkdtemp(prefix="caocrvfy-export-"))
    calibration = []
    if any(fmt in QUANTISED for fmt in args.formats.split(",")):
        from caocrvfy.data.images import open_image

        drawn = generate(export_dir / "calibration", 200, CaptchaSpec(first.charset, first.max_length, first.width,
                                                                      first.height))
        calibration = [open_image(path, first.height, first.width, first.channels) for path in read_folder(drawn).paths]
    default = Predictor.load()  # what `caocrvfy predict` reads without --model
    readers[f"caocrvfy default: {default.path.parent.name}/{default.path.name}"] = default
    for model in models:
        path = resolve_model_path(model)[0]
        name = path.parent.name
        if path.suffix != ".keras":  # an exported file is read as it is
            readers[f"caocrvfy {name}/{path.name}"] = Predictor.load(path)
            continue
        for fmt in args.formats.split(","):
            suffix = fmt.split("-")[0]
            target = export_dir / name / fmt / f"model.{suffix}"
            if fmt == "keras":
                path = model
            elif fmt in QUANTISED:
                path = quantised_export(model, fmt, target, calibration)
            else:
                path = export_model(model, suffix, target, int8=fmt == "tflite-int8")
            readers[f"caocrvfy {name} ({fmt})"] = Predictor.load(path)
    ocr, peer_version = common.load_ddddocr()
    if ocr is None:
        print(peer_version)

    def batch_read(reader):
        return [r.text for r in reader.predict(images, batch_size=256)]

    jobs = {name: (lambda item, r=reader: r.predict([item]), lambda r=reader: batch_read(r))
            for name, reader in readers.items()}
    if ocr is not None:
        def ddddocr_all():
            return [ocr.classification(item) for item in images]
        jobs[f"ddddocr {peer_version}"] = (ocr.classification, ddddocr_all)

    best = {name: {"single": None, "batch": None, "texts": None} for name in jobs}
    for name, (one, _) in jobs.items():  # warm-up: tracing, thread pools, file cache
        one(images[0])
    for _ in range(args.rounds):
        for name, (one, everything) in jobs.items():
            times = single_latencies(one, images[: args.single])
            start = time.perf_counter()
            texts = everything()
            rate = len(images) / (time.perf_counter() - start)
            b = best[name]
            if b["single"] is None or statistics.median(times) < statistics.median(b["single"]):
                b["single"] = times
            b["batch"] = max(b["batch"] or 0.0, rate)
            b["texts"] = texts

    peer = next((n for n in best if n.startswith("ddddocr")), None)
    rows = []
    for name, b in best.items():
        fold = name == peer  # ddddocr reads lower case
        records = [(truth, text or "", 0.0) for truth, text in zip(labels, b["texts"])]
        rows.append({"reader": name, "p50_ms": 1000 * statistics.median(b["single"]),
                     "p99_ms": 1000 * percentile(b["single"], 0.99), "batch_images_per_s": b["batch"],
                     "full_match": (case_folded_full_match if fold else full_match)(records), "case_folded": fold})
    ref = next((r for r in rows if r["reader"] == peer), None)

    software = ", ".join(f"{k} {v}" for k, v in common.software().items())
    lines = [
        "## Reading speed against ddddocr",
        "",
        f"Measured {started} on {host}; {software}. {len(images):,} captchas from {folder} "
        f"(PNG bytes in, text out), {args.rounds} rounds, best round each.",
        "",
        "| reader | single image p50 | p99 | vs ddddocr (latency) | batch images/s | vs ddddocr (throughput) | full-match |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lat = f"{r['p50_ms'] / ref['p50_ms']:.2f}x" if ref else "n/a"
        thr = f"{r['batch_images_per_s'] / ref['batch_images_per_s']:.1f}x" if ref else "n/a"
        lines.append(f"| {r['reader']} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {lat} | "
                     f"{r['batch_images_per_s']:.0f} | {thr} | {r['full_match']:.2%}"
                     f"{' (case-folded)' if r['case_folded'] else ''} |")
    print("\n".join(lines))
    common.write_result("speed-vs-ddddocr", {"folder": str(folder), "images": len(images), "rounds": args.rounds,
                                             "readers": rows}, args.results_dir, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
