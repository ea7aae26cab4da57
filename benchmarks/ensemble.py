"""Do two CTC readers of the same captcha kind read better together? Side by side on one folder.

    python benchmarks/ensemble.py MODEL_A MODEL_B LABELLED_FOLDER

Reads every image with both models and combines their per-step outputs two ways: the
arithmetic mean and the geometric mean (renormalised). CTC models need not align their
characters to the same steps, so the arithmetic mean can blur two sharp alignments into
nothing; the geometric mean keeps only what both agree on. Prints full-match of each.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from caocrvfy.data import load_images, read_folder
from caocrvfy.predict import Predictor, decode_outputs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_a")
    p.add_argument("model_b")
    p.add_argument("folder")
    args = p.parse_args()
    a, b = Predictor.load(args.model_a), Predictor.load(args.model_b)
    if (a.charset, a.head, a.length) != (b.charset, b.head, b.length) or a.head != "ctc":
        raise SystemExit("both models must be CTC readers of the same character set and length")
    found = read_folder(args.folder, charset=a.charset, length=a.length)
    images, labels, _ = load_images(found, a.height, a.width, a.channels, dedupe=False)
    out_a = np.concatenate([a.model.predict_on_batch(images[i : i + 256]) for i in range(0, len(images), 256)])
    out_b = np.concatenate([b.model.predict_on_batch(images[i : i + 256]) for i in range(0, len(images), 256)])
    geometric = np.sqrt(np.clip(out_a, 1e-12, 1) * np.clip(out_b, 1e-12, 1))
    combined = {"a": out_a, "b": out_b, "arithmetic mean": (out_a + out_b) / 2,
                "geometric mean": geometric / geometric.sum(-1, keepdims=True)}
    result = {"count": len(labels)}
    for name, outputs in combined.items():
        reads = decode_outputs(outputs, "ctc", a.charset, a.length)
        result[name] = sum(r.text == t for r, t in zip(reads, labels)) / len(labels)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
