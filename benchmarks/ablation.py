"""The seed's loss experiments, measured: every variant trains on the same captchas for the same
number of steps, then reads the same fresh test set.

    python benchmarks/ablation.py --out /tmp/ablation
    KERAS_BACKEND=jax python benchmarks/ablation.py --parallel 4 --train-size 50000 --epochs 10 \\
        --batch-size 256 --out /tmp/ablation      # a GPU box: four variants at a time
    python benchmarks/ablation.py --from-results benchmarks/results/ablation-h100-2026-11-23.json

Variants (the base is the seed's form: the sigmoid head with BinaryFocalLoss, gamma 2, alpha
0.25): binary cross-entropy; BinaryFocalLoss with gamma 0, 1, 2, 3 and alpha 0.25 and 0.5;
focal plus Dice; Tversky (0.7 missed, 0.3 spurious); the softmax and CTC heads; the CTC head
without channel attention and with augmentation. (Label smoothing, class weights and Dice
weighted 0.7/1.8 were measured on 2026-11-23, docs/notes/2026-11-23-ablation.md; their training
options are gone, and so are the variants.)
Each variant is one `python -m caocrvfy.train` run (cosine schedule over --epochs, no early
stopping), on one cached training set and validation set; the test set is drawn fresh once
per run of this script and never trained on. Each run is read by its Predictor in a fresh
process and scored by caocrvfy.evaluation.scores: test full-match, character accuracy, and
precision and recall over all characters of the readings (for every head; the sigmoid rows of
the 2026-11-23 file have Keras's binary precision and recall at 0.5 instead), then the best
epoch's validation loss, the last epoch's train/validation loss ratio and the wall time. Losses
differ in scale between variants: compare loss ratios within a variant, accuracies across them.
The table is printed and the rows written to benchmarks/results/ablation-DATE.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path

import common

BASE = ["--head", "sigmoid"]
VARIANTS = {
    "sigmoid, binary cross-entropy": BASE + ["--loss", "ce"],
    **{f"sigmoid, focal gamma {g} alpha {a}": BASE + ["--focal-gamma", str(g), "--focal-alpha", str(a)]
       for a in (0.25, 0.5) for g in (0, 1, 2, 3)},
    "sigmoid, focal + dice 1.0/1.0": BASE + ["--loss", "focal+dice"],
    "sigmoid, tversky (0.7 missed, 0.3 spurious)": BASE + ["--loss", "tversky"],
    "softmax, categorical focal": ["--head", "softmax"],
    "ctc, focal CTC": ["--head", "ctc"],
    "ctc, focal CTC, no channel attention": ["--head", "ctc", "--no-attention"],
    "ctc, focal CTC, augmentation": ["--head", "ctc", "--augment", "on"],
}
SEED_VARIANT = "sigmoid, focal gamma 2 alpha 0.25"


def table_rows(results: list[dict], names: list[str]) -> list[str]:
    """Markdown rows in `names` order; a variant without a result is marked as not run."""
    by_name = {r["name"]: r for r in results}
    rows = []
    for name in names:
        r = by_name.get(name)
        mark = " (seed)" if name == SEED_VARIANT else ""
        if r is None:
            rows.append(f"| {name}{mark} | not run | | | | | | |")
        elif "full_match" not in r:
            rows.append(f"| {name}{mark} | failed: see {r['run']}/train.log | | | | | | |")
        else:
            rows.append(f"| {name}{mark} | {r['full_match']:.2%} | {r['char_accuracy']:.2%} | "
                        f"{r['precision']:.2%} | {r['recall']:.2%} | {r['val_loss']:.4f} | {r['ratio']:.2f} | "
                        f"{r['seconds']:.0f} s |")
    return rows


HEADER = ["| variant | full-match | char accuracy | precision | recall | val loss | train/val loss | time |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]


def pick(spec: str | None, names: list[str]) -> list[str]:
    """Comma-separated names or 1-based numbers of `names`; all of them without `spec`."""
    if not spec:
        return names
    picked = [v.strip() for v in spec.split(",")]
    return [names[int(v) - 1] if v.isdigit() and 0 < int(v) <= len(names) else v for v in picked]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="runs, data cache and test set go here (required)")
    p.add_argument("--variants", help="comma-separated names or 1-based numbers (default: all)")
    p.add_argument("--train-size", type=int, default=8000, help="cached training captchas (default 8000)")
    p.add_argument("--val-size", type=int, default=1000, help="validation captchas (default 1000)")
    p.add_argument("--test-size", type=int, default=2000, help="fresh test captchas (default 2000)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per variant (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="(default 64)")
    p.add_argument("--learning-rate", type=float, default=0.002, help="peak rate (default 0.002)")
    p.add_argument("--parallel", type=int, default=1, help="variants trained at once (default 1)")
    p.add_argument("--from-results", type=Path,
                   help="print the table of an earlier result file (its variants, or those of --variants)")
    common.add_results_option(p)
    args = p.parse_args()
    if args.from_results:
        results = common.read_results(args.from_results)
        print("\n".join(HEADER + table_rows(results, pick(args.variants, [r["name"] for r in results]))))
        return 0
    names = pick(args.variants, list(VARIANTS))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; choose from: " + "; ".join(VARIANTS), file=sys.stderr)
        return 2
    if args.out is None:
        p.error("--out is required")

    from caocrvfy.data.synthetic import CaptchaSpec

    started = time.strftime("%Y-%m-%d %H:%M %Z")
    host = common.machine()
    spec = CaptchaSpec()
    # Drawn once, before any variant starts, so that all of them train on the same captchas.
    cache, test_dir = common.draw_fixed_sets(args.out, spec, args.train_size, args.val_size, args.test_size)
    shared = ["--synthetic", "cache", "--cache-dir", str(cache), "--train-size", str(args.train_size),
              "--val-size", str(args.val_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--learning-rate", str(args.learning_rate), "--warmup-epochs", "1", "--schedule", "cosine",
              "--patience", "100000", "--seed", "0"]
    env = common.training_env(args.parallel)
    results: list[dict] = []

    def run(name: str) -> dict:
        run_dir = args.out / "runs" / common.slug(name)
        return common.train_and_score(name, shared + VARIANTS[name], run_dir, test_dir, env)

    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        for result in pool.map(run, names):
            results.append(result)  # kept as they come, so an interrupted run still leaves them
            (args.out / "results.json").write_text(json.dumps(results, indent=2))

    lines = [
        "## Loss and head ablation",
        "",
        f"Measured {started} on {host}. Every variant: {args.train_size:,} cached captchas "
        f"(6 of `0-9a-zA-Z`, 160 x 60), {args.epochs} epochs of batch {args.batch_size}, peak rate "
        f"{args.learning_rate} with 1 warmup epoch and cosine decay, default model size; scored on "
        f"{args.test_size:,} fresh captchas never trained on; {args.parallel} variant(s) at a time.",
        "",
        *HEADER,
        *table_rows(results, names),
    ]
    print("\n".join(lines))
    common.write_result("ablation", results, args.results_dir, started)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
