"""Do two CTC readers of the same captcha kind read better together? Side by side on one folder.

    python benchmarks/ensemble.py MODEL_A MODEL_B LABELLED_FOLDER

Reads every image with both models and combines their per-step outputs two ways: the
arithmetic mean and the geometric mean (renormalised). CTC models need not align their
characters to the same steps, so the arithmetic mean can blur two sharp alignments into
nothing; the geometric mean keeps only what both agree on. Prints full-match of each and
writes it to benchmarks/results/ensemble-DATE.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import common
from caocrvfy.data.folders import load_images, read_folder
from caocrvfy.evaluation.scores import full_match
from caocrvfy.inference import Predictor
from caocrvfy.inference.decoding import decode_outputs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_a")
    p.add_argument("model_b")
    p.add_argument("folder")
    common.add_results_option(p)
    args = p.parse_args()
    a, b = Predictor.load(args.model_a), Predictor.load(args.model_b)
    if (a.charset, a.head, a.length) != (b.charset, b.head, b.length) or a.head != "ctc":
        raise SystemExit("both models must be CTC readers of the same character set and length")
    found = read_folder(args.folder, charset=a.charset, length=a.length)
    images, labels, _ = load_images(found, a.height, a.width, a.channels, dedupe=False)
    out_a, out_b = a.outputs(images), b.outputs(images)
    if out_a.shape != out_b.shape:
        raise SystemExit(f"the models read in {out_a.shape[1]} and {out_b.shape[1]} CTC steps: give two with the same "
                         "input size and column stride")
    geometric = np.sqrt(np.clip(out_a, 1e-12, 1) * np.clip(out_b, 1e-12, 1))
    combined = {"a": out_a, "b": out_b, "arithmetic mean": (out_a + out_b) / 2,
                "geometric mean": geometric / geometric.sum(-1, keepdims=True)}
    result = {"model_a": args.model_a, "model_b": args.model_b, "folder": args.folder, "count": len(labels)}
    for name, outputs in combined.items():
        reads = decode_outputs(outputs, "ctc", a.charset, a.length)
        result[name] = full_match([(t, r.text, r.confidence) for t, r in zip(labels, reads)])
    print(json.dumps(result))
    common.write_result("ensemble", result, args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
