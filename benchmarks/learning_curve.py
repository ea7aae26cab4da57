"""Learning curves on any labelled folder: full-match against the number of labels, side by side
with ddddocr untrained.

    python benchmarks/learning_curve.py DIR                                  # every row, 25..500 labels
    python benchmarks/learning_curve.py DIR --counts 100 --rows base,base+unlabelled --minutes 10
    python benchmarks/learning_curve.py DIR --counts 100 --rows base+unlabelled --base RUN --train-option=--width=192

Split: sorted by file name, every 5th item is a test file (`own_captchas.split_test`, the
convention of the shared sets' READMEs). From the rest, N labelled images are drawn with a fixed
seed (the first N of one permutation, so that 50 holds the 25); what is left of the rest is the
unlabelled folder (its file names are never read as labels: `--unlabelled` reads pixels only).

Rows (each a fresh `python -m caocrvfy.train` process, the user's command with only the row's
option added: `--data N_LABELS --time-limit MINUTES`):
- scratch: `--init none`
- synthetic: `--init models/captcha-4x36` (a shipped model trained on one synthetic style)
- base: no option (the default start, models/base)
- base+unlabelled: `--unlabelled REST`
- ddddocr, ddddocr-ranges: ddddocr untrained, plain and with `set_ranges` set to the set's
  alphabet; read once (they do not depend on N)
- base-zero-shot: the base reader with no training, case-folded

`--base RUN` puts another model in the base's place (in the base rows, as `--init RUN`, and in
base-zero-shot); `--train-option` adds an option to every training command.

Columns: test full-match (case-folded) and the training process's CPU minutes. Writes
benchmarks/results/learning-curve-NAME-DATE.json and a plot beside it.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import common
import numpy as np
from own_captchas import list_items, make_side, score_caocrvfy, score_ddddocr, split_test

TRAIN_ROWS = {
    "scratch": ["--init", "none"],
    "synthetic": ["--init", "models/captcha-4x36"],
    "base": [],
    "base+unlabelled": None,  # --unlabelled REST, filled in per count
}
ALL_ROWS = (*TRAIN_ROWS, "ddddocr", "ddddocr-ranges", "base-zero-shot")


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def split(items: list[tuple[str, str]], seed: int) -> tuple[list, list]:
    """(test items, the rest in a fixed random order)."""
    rest, test = split_test(items)
    order = np.random.default_rng(seed).permutation(len(rest))
    return test, [rest[i] for i in order]


def test_side(root: Path, work: Path) -> tuple[Path, list, list]:
    """The split of ROOT: the folder WORK/test of its test items, those items, and the rest's
    items in their drawn order (the first N are the N labelled images)."""
    test, rest = split(list_items(root), seed=0)
    return make_side(root, work / "test", test), test, rest


def unlabelled_side(root: Path, dest: Path, items: list[tuple[str, str]]) -> Path:
    """The images of `items` without labels (no labels.csv)."""
    make_side(root, dest, items)
    (dest / "labels.csv").unlink()
    return dest


def zero_shot(test_dir: Path, base: Path) -> dict:
    from caocrvfy.evaluation import evaluate_folder
    from caocrvfy.inference import Predictor

    result = evaluate_folder(Predictor.load(base), test_dir, ignore_case=True)
    return {"full_match": result["full_match"], "count": result["count"]}


def plot(results: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, row in enumerate(dict.fromkeys(r["row"] for r in results)):
        points = sorted((r["labels"], r["full_match"]) for r in results if r["row"] == row and "full_match" in r)
        if not points:
            continue
        if points[0][0] is None:  # untrained readers: a level line
            ax.axhline(points[0][1] * 100, linestyle=("--", ":", "-.")[i % 3], linewidth=1.2, label=row, color=f"C{i}")
        else:
            ax.plot([p[0] for p in points], [p[1] * 100 for p in points], marker="o", label=row, color=f"C{i}")
    ax.set_xscale("log")
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test full-match, %")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="labelled folder (file-name labels or labels.csv)")
    p.add_argument("--counts", default="25,50,100,200,500", help="label counts (default 25,50,100,200,500)")
    p.add_argument("--rows", default=",".join(ALL_ROWS), help=f"rows to run (default all: {','.join(ALL_ROWS)})")
    p.add_argument("--minutes", type=float, default=10, help="--time-limit of each training (default 10)")
    p.add_argument("--seed", type=int, default=0, help="which labelled images are drawn (default 0)")
    p.add_argument("--work", type=Path, help="split folders and runs (default: a new temp folder)")
    p.add_argument("--base", type=Path, help="a model in the base reader's place (default: models/base)")
    p.add_argument("--train-option", action="append", default=[],
                   help="an option added to every training command (repeatable), e.g. --train-option=--width=192")
    common.add_results_option(p)
    args = p.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ALL_ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ALL_ROWS)}")
    counts = [int(c) for c in args.counts.split(",") if c]
    from caocrvfy.locations import base_model

    base = args.base or base_model()
    root = args.data.resolve()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    work = common.work_folder(args.work, "caocrvfy-curve-")

    items = list_items(root)
    test, rest = split(items, args.seed)
    test_dir = make_side(root, work / "test", test)
    alphabet = "".join(sorted(set("".join(label.lower() for _, label in items))))
    print(f"{root.name}: {len(items)} labelled, {len(test)} test files, {len(rest)} to draw labels from; "
          f"alphabet {alphabet!r}", flush=True)
    results: list[dict] = []

    def record(entry: dict) -> None:
        results.append(entry)
        shown = f"{entry['full_match']:.4f}" if "full_match" in entry else "failed"
        print(f"== {entry['row']:16s} labels {entry['labels']!s:>5}: full-match {shown}"
              + (f", {entry['cpu_minutes']:.1f} CPU min" if "cpu_minutes" in entry else ""), flush=True)

    if "ddddocr" in rows or "ddddocr-ranges" in rows:
        reader, version = common.load_ddddocr()
        if reader is None:
            print(version)
        else:
            if "ddddocr" in rows:
                record({"row": "ddddocr", "labels": None, "version": version} | score_ddddocr(reader, test_dir))
            if "ddddocr-ranges" in rows:
                ranged, _ = common.load_ddddocr()
                ranged.set_ranges(alphabet)
                record({"row": "ddddocr-ranges", "labels": None, "version": version}
                       | score_ddddocr(ranged, test_dir))
    if "base-zero-shot" in rows:
        record({"row": "base-zero-shot", "labels": None, "base": str(base)} | zero_shot(test_dir, base))

    for count in counts:
        if count > len(rest):
            print(f"{count} labels: only {len(rest)} images outside the test files; skipped")
            continue
        labelled = make_side(root, work / f"labelled-{count}", rest[:count])
        left = rest[count:]
        for row in [r for r in rows if r in TRAIN_ROWS]:
            extra = TRAIN_ROWS[row]
            if extra is None:
                if not left:
                    continue
                extra = ["--unlabelled", str(unlabelled_side(root, work / f"unlabelled-{count}", left))]
            from_base = row.startswith("base")
            if from_base and args.base:  # without --base the row is the user's command: the default start
                extra = [*extra, "--init", str(args.base)]
            extra = [*extra, *args.train_option]
            before = cpu_seconds_of_children()
            run = common.train_run(f"{row} {count}", ["--data", str(labelled), "--time-limit", f"{args.minutes:g}",
                                                      *extra], work / f"run-{common.slug(row)}-{count}", echo=True)
            run["cpu_minutes"] = (cpu_seconds_of_children() - before) / 60
            score_caocrvfy(run, test_dir)
            record({"row": row, "labels": count, "unlabelled": len(left) if row == "base+unlabelled" else 0,
                    "minutes": args.minutes, "base": str(base) if from_base else None,
                    "train_options": args.train_option} | {k: v for k, v in run.items() if k != "skipped"})

    path = common.write_result(f"learning-curve-{common.slug(root.name)}", results, args.results_dir, started)
    plot(results, path.with_suffix(".png"), f"{root.name}: {len(test)} test files, {args.minutes:g} min a run")
    print("\n| row | " + " | ".join(str(c) for c in counts) + " |")
    print("| --- |" + " ---: |" * len(counts))
    for row in dict.fromkeys(r["row"] for r in results):
        cells = []
        for count in counts:
            hit = [r for r in results if r["row"] == row and r["labels"] in (count, None)]
            cells.append(f"{hit[0]['full_match'] * 100:.1f}%" + (f" ({hit[0]['cpu_minutes']:.1f} CPU min)"
                                                                 if "cpu_minutes" in hit[0] else "")
                         if hit and "full_match" in hit[0] else "")
        print(f"| {row} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
