"""The seed's loss experiments, measured: every variant trains on the same captchas for the same
number of steps, then reads the same fresh test set.

    python benchmarks/ablation.py --out /tmp/ablation --write-benchmarks BENCHMARKS.md
    KERAS_BACKEND=jax python benchmarks/ablation.py --parallel 4 --train-size 50000 --epochs 10 \\
        --batch-size 256 --out /tmp/ablation      # a GPU box: four variants at a time

Variants (the base is the seed's form: the sigmoid head with BinaryFocalLoss, gamma 2, alpha
0.25): binary cross-entropy; BinaryFocalLoss with gamma 0, 1, 2, 3 and alpha 0.25 and 0.5;
focal plus Dice at 1.0/1.0 and 0.7/1.8; Tversky; label smoothing 0.1; class weights; the
softmax and CTC heads; the CTC head without channel attention and with augmentation.
Each variant is one `python -m caocrvfy.train` run (cosine schedule over --epochs, no early
stopping), on one cached training set and validation set; the test set is drawn fresh once
per run of this script and never trained on. The table gives test full-match, character
accuracy, precision and recall, the best epoch's validation loss, the last epoch's train/
validation loss ratio and the wall time. Losses differ in scale between variants: compare
loss ratios within a variant, accuracies across them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from own_captchas import machine, write_section

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BASE = ["--head", "sigmoid"]
VARIANTS = {
    "sigmoid, binary cross-entropy": BASE + ["--loss", "ce"],
    **{f"sigmoid, focal gamma {g} alpha {a}": BASE + ["--focal-gamma", str(g), "--focal-alpha", str(a)]
       for a in (0.25, 0.5) for g in (0, 1, 2, 3)},
    "sigmoid, focal + dice 1.0/1.0": BASE + ["--loss", "focal+dice"],
    "sigmoid, focal + dice 0.7/1.8": BASE + ["--loss", "focal+dice", "--loss-weights", "0.7,1.8"],
    "sigmoid, tversky (0.7 missed, 0.3 spurious)": BASE + ["--loss", "tversky"],
    "sigmoid, focal, label smoothing 0.1": BASE + ["--label-smoothing", "0.1"],
    "sigmoid, focal, class weights": BASE + ["--class-weights"],
    "softmax, categorical focal": ["--head", "softmax"],
    "ctc, focal CTC": ["--head", "ctc"],
    "ctc, focal CTC, no channel attention": ["--head", "ctc", "--no-attention"],
    "ctc, focal CTC, augmentation": ["--head", "ctc", "--augment", "on"],
}
SEED_VARIANT = "sigmoid, focal gamma 2 alpha 0.25"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def run_variant(name: str, common: list[str], out: Path, test_dir: Path, env: dict,
                options: list[str] | None = None) -> dict:
    """Trains one variant (its `options`, by default VARIANTS[name], after `common`), then scores
    it in a fresh process (so that variants score in parallel)."""
    run = out / "runs" / slug(name)
    options = VARIANTS[name] if options is None else options
    cmd = [sys.executable, "-m", "caocrvfy.train", *common, *options, "--out", str(run)]
    run.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (run / "train.log").open("w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
        seconds = time.perf_counter() - start
        ok = code == 0 and (run / "model.keras").exists()
        if ok:
            subprocess.call([sys.executable, str(Path(__file__).resolve()), "--score-run", str(run),
                             "--test-dir", str(test_dir)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
    print(f"[{name}] exit {code} after {seconds:.0f} s: {shlex.join(cmd)}", flush=True)
    scores = run / "scores.json"
    result = {"name": name, "run": str(run), "ok": ok, "seconds": seconds}
    return result | (json.loads(scores.read_text()) if ok and scores.exists() else {})


def score(run: Path, test_dir: Path) -> dict:
    """Test metrics of a finished run, its validation loss and last train/validation loss ratio."""
    import keras

    from caocrvfy.charset import encode_labels
    from caocrvfy.data import load_images, read_folder
    from caocrvfy.model_enhanced import compile_model, model_head
    from caocrvfy.pipeline import encode_targets

    model = keras.models.load_model(run / "model.keras", compile=False)
    head = model_head(model)
    config = json.loads((run / "config.json").read_text())["resolved"]
    charset, (height, width, channels) = config["charset"], config["input_shape"]
    found = read_folder(test_dir, charset=charset, length=config["max_length"])
    images, labels, _ = load_images(found, height, width, channels, dedupe=False)
    y = encode_targets(encode_labels(labels, charset, config["max_length"]), head, len(charset))
    compile_model(model, jit_compile=keras.backend.backend() != "tensorflow")
    scores = model.evaluate(images, y, batch_size=256, verbose=0, return_dict=True)
    with (run / "history.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    validation = json.loads((run / "metrics.json").read_text())
    return {k: float(scores[k]) for k in ("full_match", "char_accuracy", "precision", "recall")} | {
        "test_images": len(images), "val_loss": validation["loss"],
        "ratio": float(last["loss"]) / float(last["val_loss"])}


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
    p.add_argument("--write-benchmarks", type=Path, help="put the table into this markdown file")
    p.add_argument("--from-results", type=Path, help="print the table rows of an earlier run's results.json")
    p.add_argument("--score-run", type=Path, help=argparse.SUPPRESS)  # internal: score one run folder
    p.add_argument("--test-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.score_run:
        (args.score_run / "scores.json").write_text(json.dumps(score(args.score_run, args.test_dir)))
        return 0
    names = list(VARIANTS)
    if args.variants:
        picked = [v.strip() for v in args.variants.split(",")]
        names = [names[int(v) - 1] if v.isdigit() else v for v in picked]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; choose from: " + "; ".join(VARIANTS), file=sys.stderr)
        return 2
    if args.from_results:
        print("\n".join(table_rows(json.loads(args.from_results.read_text()), names)))
        return 0
    if args.out is None:
        p.error("--out is required")

    from caocrvfy.data import CaptchaSpec, generate
    from caocrvfy.train import TrainConfig, _synthetic_cache

    started = time.strftime("%Y-%m-%d %H:%M %Z")
    host = machine()
    spec = CaptchaSpec("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", 6, 160, 60)
    cache = args.out / "cache"
    # Drawn once, before any variant starts, so that all of them train on the same captchas.
    for split, count in (("train", args.train_size), ("val", args.val_size)):
        generate(_synthetic_cache(TrainConfig(cache_dir=str(cache)), spec, split), count, spec)
    test_dir = generate(args.out / "test", args.test_size, spec)

    common = ["--train-size", str(args.train_size), "--val-size", str(args.val_size), "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
              "--warmup-epochs", "1", "--schedule", "cosine", "--patience", "100000", "--cache-dir", str(cache),
              "--seed", "0"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if args.parallel > 1:  # JAX would otherwise give the first process most of the GPU's memory
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / args.parallel:.2f}")
    results: list[dict] = []
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        for result in pool.map(lambda n: run_variant(n, common, args.out, test_dir, env), names):
            results.append(result)  # kept as they come, so an interrupted run still leaves them
            (args.out / "results.json").write_text(json.dumps(results, indent=2))

    import keras

    lines = [
        "## Loss and head ablation (issue 5)",
        "",
        f"Measured {started} on {host}; Keras {keras.__version__} ({keras.backend.backend()} backend), "
        f"Python {platform.python_version()}. Every variant: {args.train_size:,} cached captchas "
        f"(6 of `0-9a-zA-Z`, 160 x 60), {args.epochs} epochs of batch {args.batch_size}, peak rate "
        f"{args.learning_rate} with 1 warmup epoch and cosine decay, default model size; scored on "
        f"{args.test_size:,} fresh captchas never trained on; {args.parallel} variant(s) at a time.",
        "",
        "```",
        shlex.join(["python", "benchmarks/ablation.py", *sys.argv[1:]]),
        "```",
        "",
        "| variant | full-match | char accuracy | precision | recall | val loss | train/val loss | time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += table_rows(results, names)
    text = "\n".join(lines)
    print(text)
    if args.write_benchmarks:
        write_section(args.write_benchmarks, lines[0], text)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
