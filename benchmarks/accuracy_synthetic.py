"""Full-string accuracy of a model on fresh captchas of its own kind, never used in training.

    python benchmarks/accuracy_synthetic.py --model models/captcha-6x62 --count 3000

Draws `--count` new captchas with the `captcha` library (character set, length and size from
the model's config.json) into a new folder, reads them (`caocrvfy.evaluation.read_labelled_folder`)
and prints case-sensitive and case-folded full-match, character accuracy, the most frequent
confusions (`caocrvfy.evaluation.scores`) and how much of the error is between look-alike
characters (same letter in the other case, 0/O, 1/l/I). The figures are also written to
benchmarks/results/accuracy-synthetic-MODEL-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import common
from caocrvfy.data.synthetic import CaptchaSpec, generate
from caocrvfy.evaluation import read_labelled_folder
from caocrvfy.evaluation.scores import case_folded_full_match, char_accuracy, confusions, differences, full_match
from caocrvfy.inference import Predictor
from caocrvfy.locations import resolve_model_path

LOOK_ALIKE_GROUPS = ["0oO", "1lIi", "5sS", "2zZ", "8B", "9gq", "6b", "uUvV", "cC", "kK", "pP", "wW", "xX", "yY", "jJ"]


def look_alike(a: str | None, b: str | None) -> bool:
    if a is None or b is None:  # a character missing or added
        return False
    return a.lower() == b.lower() or any(a in g and b in g for g in LOOK_ALIKE_GROUPS)


def measure(model: str, count: int, folder: Path | None = None) -> dict:
    reader = Predictor.load(model)
    config = reader.model_config
    spec = CaptchaSpec(config.charset, config.max_length, config.width, config.height)
    folder = folder or Path(tempfile.mkdtemp(prefix="caocrvfy-fresh-"))
    generate(folder, count, spec)
    start = time.perf_counter()
    records, _, _ = read_labelled_folder(reader, folder)
    seconds = time.perf_counter() - start
    wrong = [differences(t, p) for t, p, _ in records if t != p]
    n = len(records)
    return {
        "model": model,
        "count": n,
        "full_match": full_match(records),
        "full_match_case_folded": case_folded_full_match(records),
        "char_accuracy": char_accuracy(records),
        "wrong": len(wrong),
        "wrong_only_look_alike": sum(all(look_alike(a, b) for _, a, b in diffs) for diffs in wrong),
        "top_confusions": [[f"{c['truth']}->{c['prediction']}", c["count"]] for c in confusions(records, 12)],
        "images_per_second_cpu": n / seconds,
        "folder": str(folder),
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run folder or model file")
    p.add_argument("--count", type=int, default=3000, help="fresh captchas (default 3000)")
    p.add_argument("--folder", type=Path, help="keep the fresh captchas here (default: a new temp folder)")
    common.add_results_option(p)
    args = p.parse_args()
    result = measure(args.model, args.count, args.folder)
    print(json.dumps(result, indent=2))
    name = resolve_model_path(args.model)[0].parent.name
    common.write_result(f"accuracy-synthetic-{common.slug(name)}", result, args.results_dir)


if __name__ == "__main__":
    main()
