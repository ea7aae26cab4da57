"""What holding readings to the site's length and alphabet gains: full-match without and with
`--length`/`--min-length`/`--max-length` and `--allowed`, same model, same images, one run.

    python benchmarks/constrained.py --model models/base ../shared/datasets/swust-cas-2019 --test-fifth --ignore-case
    python benchmarks/constrained.py --model models/captcha-6x62 /tmp/fresh-6x62 /tmp/fresh-6-digits

The constraint is what a user knows of the site, taken from the folder's labels: the lengths
(one length, or the shortest and longest) and the characters that occur. Compared case-folded
(--ignore-case), the allowed characters are those in both cases where the model reads both,
since a case-folded comparison counts 'X' for 'x' as right. --test-fifth scores only every
5th file by sorted name (the shared sets' test files; the learning-curve split).
Writes benchmarks/results/constrained-DATE.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import common
from own_captchas import list_items, make_side, split_test


def site_constraint(labels: list[str], charset: str, ignore_case: bool):
    from caocrvfy.inference.decoding import Constraint

    seen = set("".join(labels))
    if ignore_case:
        seen |= {c.upper() for c in seen} | {c.lower() for c in seen}
    lengths = sorted({len(label) for label in labels})
    allowed = "".join(sorted(seen & set(charset)))
    return Constraint.of(min_length=lengths[0], max_length=lengths[-1], allowed=allowed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, nargs="+", help="labelled folders")
    p.add_argument("--model", required=True, help="run folder or model file")
    p.add_argument("--ignore-case", action="store_true", help="compare case-folded")
    p.add_argument("--test-fifth", action="store_true", help="only every 5th file by sorted name")
    p.add_argument("--work", type=Path, default=Path("/tmp/caocrvfy-constrained"), help="for --test-fifth's folders")
    common.add_results_option(p)
    args = p.parse_args()
    from caocrvfy.evaluation import evaluate_folder
    from caocrvfy.inference import Predictor

    reader = Predictor.load(args.model)
    results = []
    for folder in args.data:
        root = folder.resolve()
        items = list_items(root)
        if args.test_fifth:
            items = split_test(items)[1]
            root = make_side(root, args.work / common.slug(folder.name), items)
        rule = site_constraint([label for _, label in items], reader.charset, args.ignore_case)
        free = evaluate_folder(reader, root, ignore_case=args.ignore_case)
        held = evaluate_folder(reader, root, ignore_case=args.ignore_case, constraint=rule)
        entry = {"data": str(folder), "model": args.model, "count": free["count"], "ignore_case": args.ignore_case,
                 "constraint": {"min_length": rule.min_length, "max_length": rule.max_length, "allowed": rule.allowed},
                 "free": free["full_match"], "constrained": held["full_match"],
                 "free_char": free["char_accuracy"], "constrained_char": held["char_accuracy"]}
        results.append(entry)
        print(f"{folder.name}: {entry['count']} images, lengths {rule.min_length}-{rule.max_length}, "
              f"{len(rule.allowed)} characters: full-match {entry['free']:.4f} free, {entry['constrained']:.4f} "
              f"constrained ({(entry['constrained'] - entry['free']) * 100:+.2f} points)", flush=True)
    common.write_result("constrained", results, args.results_dir)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
