"""How to spend 20 CPU minutes: fewer captchas seen many times, or more seen fewer times?

    KERAS_BACKEND=jax python benchmarks/data_budget.py --out /tmp/budget --parallel 6 \\
        --variants 30000:15,52000:8,90000:4,150000:2

On a 2-core CPU, drawing captchas and training share the 20-minute budget: drawing D captchas
takes D / 355 seconds (both cores), and the default model then trains at about 420
images/s (BENCHMARKS.md). So 30,000 captchas leave time for about 15 passes, 52,000 for 8,
90,000 for 4 and 150,000 for 2. Each variant `D:EPOCHS[:PEAK_RATE]` trains the default model on
the first D of one cached pool for that many epochs (batch 64, the same number of warmup steps,
cosine decay to the end), with the same validation set, and reads the same fresh test set.
The outcome depends only on which images and how many steps, not on the device, so a GPU
settles in minutes what takes the CPU 20 minutes a variant; the winner is then checked on the
CPU with the real time limit. The table is printed and the rows written to
benchmarks/results/data-budget-DATE.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path

import common

WARMUP_STEPS = 940  # about the default training's warmup: 2 epochs of 30,000 at batch 64 are 938 steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="runs, data cache and test set go here")
    p.add_argument("--variants", default="30000:15,52000:8,90000:4,150000:2",
                   help="comma-separated TRAIN_SIZE:EPOCHS[:PEAK_RATE] (default: the 20-minute CPU budgets)")
    from caocrvfy.training.config import BATCH, TrainConfig

    d = TrainConfig()
    p.add_argument("--learning-rate", type=float, default=d.learning_rate,
                   help=f"peak rate (default {d.learning_rate}, the training default)")
    p.add_argument("--batch-size", type=int, default=BATCH, help=f"(default {BATCH})")
    p.add_argument("--val-size", type=int, default=d.val_size, help=f"(default {d.val_size})")
    p.add_argument("--test-size", type=int, default=3000, help="(default 3000)")
    p.add_argument("--parallel", type=int, default=1, help="variants trained at once (default 1)")
    common.add_results_option(p)
    args = p.parse_args()

    from caocrvfy.data.synthetic import CaptchaSpec

    started = time.strftime("%Y-%m-%d %H:%M %Z")
    variants = {}
    for item in args.variants.split(","):
        size, epochs, *rate = item.split(":")
        size, epochs, rate = int(size), int(epochs), float(rate[0]) if rate else args.learning_rate
        variants[f"{size} x {epochs}, rate {rate}"] = (size, epochs, [
            "--train-size", str(size), "--epochs", str(epochs), "--learning-rate", str(rate),
            "--warmup-epochs", f"{WARMUP_STEPS * args.batch_size / size:.4f}"])
    pool_size = max(size for size, _, _ in variants.values())
    cache, test_dir = common.draw_fixed_sets(args.out, CaptchaSpec(), pool_size, args.val_size, args.test_size)
    shared = ["--synthetic", "cache", "--cache-dir", str(cache), "--val-size", str(args.val_size),
              "--batch-size", str(args.batch_size), "--schedule", "cosine", "--patience", "100000", "--seed", "0"]
    env = common.training_env(args.parallel)

    def run(name: str) -> dict:
        size, epochs, options = variants[name]
        run_dir = args.out / "runs" / common.slug(name)
        return common.train_and_score(name, shared + options, run_dir, test_dir, env) | {"images_seen": size * epochs}

    results = []
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        for result in pool.map(run, variants):
            results.append(result)
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{started}; test: {args.test_size} fresh captchas")
    print("| training images x epochs, peak rate | images seen | test full-match | char accuracy | time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        cells = (f"{r['full_match']:.2%} | {r['char_accuracy']:.2%}" if "full_match" in r
                 else f"failed: see {r['run']}/train.log |")
        print(f"| {r['name']} | {r['images_seen']:,} | {cells} | {r['seconds']:.0f} s |")
    common.write_result("data-budget", results, args.results_dir, started)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
