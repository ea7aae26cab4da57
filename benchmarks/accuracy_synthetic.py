"""Full-string accuracy of a model on fresh captchas of its own kind, never used in training.

    python benchmarks/accuracy_synthetic.py --model models/captcha-6x62 --count 3000

Draws `--count` new captchas with the `captcha` library (character set, length and size from
the model's config.json) into a new folder, reads them, and prints case-sensitive and
case-folded full-match, character accuracy, the most frequent confusions and how much of the
error is between look-alike characters (same letter in the other case, 0/O, 1/l/I).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import tempfile
import time
from pathlib import Path

from caocrvfy.data import CaptchaSpec, generate, read_folder
from caocrvfy.predict import Predictor

LOOK_ALIKE_GROUPS = ["0oO", "1lIi", "5sS", "2zZ", "8B", "9gq", "6b", "uUvV", "cC", "kK", "pP", "wW", "xX", "yY", "jJ"]


def look_alike(a: str, b: str) -> bool:
    return a.lower() == b.lower() or any(a in g and b in g for g in LOOK_ALIKE_GROUPS)


def measure(model: str, count: int, folder: Path | None = None) -> dict:
    reader = Predictor.load(model)
    resolved = reader.config["resolved"]
    spec = CaptchaSpec(resolved["charset"], resolved["max_length"], reader.width, reader.height)
    folder = folder or Path(tempfile.mkdtemp(prefix="caocrvfy-fresh-"))
    generate(folder, count, spec)
    found = read_folder(folder, charset=spec.charset, length=spec.length)
    start = time.perf_counter()
    results = list(reader.predict_files(found.paths))
    seconds = time.perf_counter() - start
    truth = dict(zip(found.paths, found.labels))
    pairs = [(truth[p], pred.text) for p, pred, err in results if pred is not None]
    confusions: collections.Counter = collections.Counter()
    wrong_strings = wrong_alike = 0
    for t, p in pairs:
        if t == p:
            continue
        wrong_strings += 1
        diffs = [(a, b) for a, b in zip(t, p) if a != b] if len(t) == len(p) else []
        confusions.update(diffs)
        if diffs and all(look_alike(a, b) for a, b in diffs):
            wrong_alike += 1
    n = len(pairs)
    return {
        "model": model,
        "count": n,
        "full_match": sum(t == p for t, p in pairs) / n,
        "full_match_case_folded": sum(t.lower() == p.lower() for t, p in pairs) / n,
        "char_accuracy": sum(a == b for t, p in pairs for a, b in zip(t, p)) / sum(len(t) for t, _ in pairs),
        "wrong": wrong_strings,
        "wrong_only_look_alike": wrong_alike,
        "top_confusions": [[f"{a}->{b}", c] for (a, b), c in confusions.most_common(12)],
        "images_per_second_cpu": n / seconds,
        "folder": str(folder),
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run folder or model file")
    p.add_argument("--count", type=int, default=3000, help="fresh captchas (default 3000)")
    p.add_argument("--folder", type=Path, help="keep the fresh captchas here (default: a new temp folder)")
    args = p.parse_args()
    print(json.dumps(measure(args.model, args.count, args.folder), indent=2))


if __name__ == "__main__":
    main()
