"""Train on your own captchas, side by side with ddddocr.

    python benchmarks/own_captchas.py DATA_DIR --write-benchmarks BENCHMARKS.md          # 12 min + curve
    python benchmarks/own_captchas.py DATA_DIR --minutes 0.5 --curve 100 --curve-minutes 0.3   # smoke run

Works on any labelled folder (label = file name up to the first `_` or `.`, or `labels.csv`).
Sorted by file name, every 5th file is test and the rest train; both sides are folders of
symlinks under --work, so labels still parse. caocrvfy is trained on the train side by the
project's own command (`python -m caocrvfy.train --data ... --ignore-case --schedule cosine`,
one fresh process per run, its wall time measured; early stopping and the epoch cap are lifted
so the time budget ends every run) and scored on the test side with `evaluate_folder`.
ddddocr (`pip install ddddocr`), pretrained and untrained here, reads the same test files one
at a time; its reads are compared case-folded and an exception counts as a wrong read.
Reading speed of both is timed one after the other in this process.

The learning curve trains on the first N train files, from scratch and from --init (a model
trained on synthetic captchas), both with the init model's architecture so that only the
starting weights differ.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOISE = re.compile(r"absl::InitializeLog|cudart_stub|cuda_platform|cuInit|computation_placer|TF-TRT")
ARCHITECTURE = ("filters", "dense_units", "rnn_units", "sequence", "stem", "attention", "channels", "head")


# ---------------------------------------------------------------- split


def list_items(root: Path) -> tuple[list[str], list[str] | None, dict[str, list[str]] | None]:
    """Sorted item names, and the labels.csv header and rows by name when the folder has one."""
    csv_path = root / "labels.csv"
    if not csv_path.exists():
        from caocrvfy.data import IMAGE_SUFFIXES

        return sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), None, None
    header, rows = None, {}
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2 and row[0] == "file":
                header = row
            elif len(row) >= 2:
                rows.setdefault(row[0].strip(), row)
    return sorted(rows), header, rows


def make_side(root: Path, dest: Path, names: list[str], header, rows) -> Path:
    """A folder of symlinks to `names` (and their labels.csv rows), replacing an older one."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    kept = []
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            print(f"  {name}: skipped, labels.csv names must be paths inside the folder")
            continue
        kept.append(name)
        if (root / name).exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).symlink_to((root / name).resolve())
    if rows is not None:
        with (dest / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header or ["file", "label"])
            writer.writerows(rows[n] for n in kept)
    return dest


# ---------------------------------------------------------------- caocrvfy


def architecture_args(init: Path) -> list[str]:
    """Training flags that rebuild the init model's architecture, so its weights fit."""
    config = json.loads(init.with_name("config.json").read_text())
    args = []
    for key in ARCHITECTURE:
        value = config.get(key)
        if key == "attention":
            args += [] if value in (None, True) else ["--no-attention"]
        elif value is not None:
            args += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if key == "filters" else str(value)]
    return args


def train_run(name: str, data: Path, out: Path, minutes: float, extra: list[str], seed: int) -> dict:
    """Runs `python -m caocrvfy.train` in a fresh process; returns its run folder and timings."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "caocrvfy.train", "--data", str(data), "--ignore-case",
           "--time-limit", f"{minutes:g}", "--schedule", "cosine", "--patience", "1000000",
           "--epochs", "1000000", "--seed", str(seed), "--out", str(out), *extra]
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    epochs, copied, shown = 0, None, 0.0
    start = time.perf_counter()
    with (out / "train.log").open("w") as log, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=PROJECT_ROOT
    ) as proc:
        for line in proc.stdout:
            log.write(line)
            is_epoch = re.search(r"\bepoch +\d+/", line) is not None
            epochs += is_epoch
            if m := re.search(r"initialised (\d+) layers", line):
                copied = int(m[1])
            now = time.perf_counter()
            if NOISE.search(line):  # TensorFlow's start-up chatter stays in train.log only
                continue
            if not is_epoch or now - shown > 30:  # an epoch line at most every 30 s
                shown = now if is_epoch else shown
                print(f"[{name}] {line.rstrip()}", flush=True)
    seconds = time.perf_counter() - start
    for leftover in ("last.keras", "state.json"):  # only needed to resume
        (out / leftover).unlink(missing_ok=True)
    ok = proc.returncode == 0 and (out / "model.keras").exists()
    if not ok:
        print(f"[{name}] training failed (exit {proc.returncode}); see {out / 'train.log'}", flush=True)
    resolved = json.loads((out / "config.json").read_text())["resolved"] if ok else {}
    return {"name": name, "run": str(out), "ok": ok, "minutes": minutes, "seconds": seconds, "epochs": epochs,
            "layers_copied": copied, "train_images": resolved.get("train_images"),
            "val_images": resolved.get("val_images")}


def score_caocrvfy(run: dict, test_dir: Path) -> None:
    """Adds the test-split scores of a finished run to `run`."""
    from caocrvfy.predict import Predictor, evaluate_folder

    if not run["ok"]:
        return
    result = evaluate_folder(Predictor.load(run["run"]), test_dir, ignore_case=True)
    for item in result["skipped"]:
        print(f"  caocrvfy skipped {item['file']}: {item['reason']}")
    run.update(full_match=result["full_match"], char_accuracy=result["char_accuracy"], count=result["count"],
               right=round(result["full_match"] * result["count"]), skipped=result["skipped"])
    print(f"[{run['name']}] test full-match {result['full_match']:.4f} ({run['right']}/{result['count']}), "
          f"char accuracy {result['char_accuracy']:.4f}, {run['seconds']:.0f} s training wall time", flush=True)


# ---------------------------------------------------------------- ddddocr


def load_ddddocr():
    """The ddddocr reader and its version, or (None, reason) when it is not installed."""
    try:
        import ddddocr
        from importlib.metadata import version
    except ImportError as exc:
        return None, f"ddddocr is not installed ({exc}); `pip install ddddocr` to add its columns"
    return ddddocr.DdddOcr(show_ad=False), version("ddddocr")


def read_ddddocr(reader, path: Path) -> str | None:
    try:
        return reader.classification(path.read_bytes()).lower()
    except Exception:  # a file it cannot read is a wrong read
        return None


def score_ddddocr(reader, test_dir: Path) -> dict:
    from caocrvfy.data import read_folder

    found = read_folder(test_dir, ignore_case=True)
    reads = [read_ddddocr(reader, p) for p in found.paths]
    pairs = list(zip(found.labels, reads))
    right = sum(t == p for t, p in pairs)
    chars = sum(sum(a == b for a, b in zip(t, p or "")) for t, p in pairs)
    return {"full_match": right / len(pairs), "char_accuracy": chars / sum(len(t) for t in found.labels),
            "count": len(pairs), "right": right, "errors": sum(p is None for p in reads)}


# ---------------------------------------------------------------- speed


def rate(fn, items: list) -> float:
    start = time.perf_counter()
    fn(items)
    return len(items) / (time.perf_counter() - start)


def time_readers(run: dict, ocr, test_dir: Path, limit: int) -> dict:
    """Images per second, file to text, one reader after the other on the same files."""
    from caocrvfy.data import read_folder
    from caocrvfy.predict import Predictor

    reader = Predictor.load(run["run"])
    bad = {item["file"] for item in run.get("skipped", [])}
    paths = [p for p in read_folder(test_dir, ignore_case=True).paths if p.name not in bad][:limit]
    list(reader.predict_files(paths))  # warm-up: graph tracing, file cache
    speed = {"images": len(paths), "caocrvfy_batched": rate(lambda ps: list(reader.predict_files(ps)), paths)}
    reader.predict(paths[:1])
    speed["caocrvfy_single"] = rate(lambda ps: [reader.predict([p]) for p in ps], paths)
    if ocr is not None:
        read_ddddocr(ocr, paths[0])
        speed["ddddocr_single"] = rate(lambda ps: [read_ddddocr(ocr, p) for p in ps], paths)
    return speed


# ---------------------------------------------------------------- report


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    cores = len(os.sched_getaffinity(0))  # what `nproc` prints
    return f"{cores} CPU cores (`nproc`), {model}; load average {os.getloadavg()[0]:.2f} at start"


def score(r: dict) -> str:
    return f"{r['full_match']:.4f} ({r['right']}/{r['count']})" if "full_match" in r else "failed"


def report(args, folder: str, split: dict, main_run: dict, peer: dict | None, peer_note: str, speed: dict,
           curve: list[dict], started: str, host: str, software: str) -> str:
    n = speed.get("images", 0)
    epochs = f"{main_run['epochs']} epoch" + ("s" if main_run["epochs"] != 1 else "")
    lines = [
        f"## Own captchas: {folder}",
        "",
        f"- Date: {started}",
        f"- Machine: {host}",
        f"- Software: {software}",
        f"- Command: `python benchmarks/own_captchas.py {shlex.join(sys.argv[1:])}`",
        f"- Split: file names sorted, every 5th is test: {split['train']} train, {split['test']} test "
        f"(caocrvfy holds {main_run.get('val_images', '?')} of its train side out for validation, "
        "chosen by name hash).",
        "",
        "| reader | training | test full-match | char accuracy | images/s, batch of 256 | images/s, one at a time |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| caocrvfy, trained here | {main_run.get('train_images', '?')} images, {args.minutes:g} min budget "
        f"({main_run['seconds']:.0f} s wall, {epochs}) | {score(main_run)} | "
        f"{main_run.get('char_accuracy', float('nan')):.4f} | {speed.get('caocrvfy_batched', float('nan')):.0f} | "
        f"{speed.get('caocrvfy_single', float('nan')):.1f} |",
    ]
    if peer:
        lines.append(f"| {peer_note} | none here (pretrained) | {score(peer)} | {peer['char_accuracy']:.4f} | - | "
                     f"{speed.get('ddddocr_single', float('nan')):.1f} |")
    lines += ["", f"Reads are case-folded on both sides. Speed: file to text on {n} test images, the readers one "
                  f"after the other in one process on this machine."
                  + (f" ddddocr: {peer['errors']} exception(s), counted wrong." if peer else f" {peer_note}.")]
    if main_run.get("skipped"):
        lines.append(f"caocrvfy skipped {len(main_run['skipped'])} test file(s): "
                     + "; ".join(f"{s['file']} ({s['reason']})" for s in main_run["skipped"][:10]))
    if curve:
        init = args.init_name
        lines += ["", f"Learning curve: the first N train files, {args.curve_minutes:g} min each, test full-match on "
                      f"the same {main_run.get('count', split['test'])} test images"
                      + (f"; both columns use {init}'s architecture, the second starts from its weights."
                         if init else "."),
                  "", "| train files | from scratch |" + (f" from {init} |" if init else ""),
                  "| --- | --- |" + (" --- |" if init else "")]
        for size in sorted({r["size"] for r in curve}):
            rows = {r["start"]: r for r in curve if r["size"] == size}
            cells = [score(rows["scratch"])]
            if init:
                r = rows.get("init", {})
                copied = f", {r['layers_copied']} layers copied" if r.get("layers_copied") is not None else ""
                cells.append(f"{score(r)}{copied}" if r else "-")
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
        if peer:
            lines.append(f"| ddddocr, untrained | {score(peer)} |" + (" |" if init else ""))
    return "\n".join(lines) + "\n"


def write_section(path: Path, heading: str, text: str) -> None:
    """Replaces the section under `heading` (up to the next `## `) or appends it."""
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old, count=1)
    else:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + text
    path.write_text(new.rstrip("\n") + "\n")


# ---------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="labelled folder (file-name labels or labels.csv)")
    p.add_argument("--minutes", type=float, default=12, help="training budget of the main run (default 12)")
    p.add_argument("--init", default="models/captcha-4x36",
                   help="pretrained model for the learning curve; 'none' to skip (default models/captcha-4x36)")
    p.add_argument("--main-init", action="store_true", help="start the main run from --init as well")
    p.add_argument("--curve", default="100,250,500", help="train sizes for the learning curve, '' for none "
                                                          "(default 100,250,500)")
    p.add_argument("--curve-minutes", type=float, default=3, help="budget of each curve run (default 3)")
    p.add_argument("--speed-images", type=int, default=500, help="test images timed per reader (default 500)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--work", type=Path, help="split folders and runs (default: a new temp folder)")
    p.add_argument("--write-benchmarks", type=Path, help="put the results section into this markdown file")
    args = p.parse_args()
    started, host = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), machine()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes from the speed warm-ups

    root = args.data.resolve()
    if not root.is_dir():
        print(f"{args.data} is not a folder: give a folder of labelled images.", file=sys.stderr)
        return 2
    init = None
    if args.init and args.init.lower() != "none":
        init = next((c for c in (Path(args.init), PROJECT_ROOT / args.init) if c.exists()), None)
        if init is None:
            print(f"--init {args.init} does not exist: the learning curve runs from scratch only.")
    if init:
        # `train --init` loads with keras.models.load_model, which wants the .keras file itself.
        init = (init / "model.keras" if init.is_dir() else init).resolve()
    args.init_name = init.parent.name if init else None
    work = (args.work or Path(tempfile.mkdtemp(prefix="caocrvfy-own-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)

    names, header, rows = list_items(root)
    train_names = [n for i, n in enumerate(names) if i % 5 != 4]
    test_names = [n for i, n in enumerate(names) if i % 5 == 4]
    if not train_names or not test_names:
        print(f"{root} has {len(names)} labelled item(s): at least 2 are needed, one for each side.", file=sys.stderr)
        return 2
    train_dir = make_side(root, work / "train", train_names, header, rows)
    test_dir = make_side(root, work / "test", test_names, header, rows)
    split = {"train": len(train_names), "test": len(test_names)}
    print(f"{root}: {len(names)} items -> {split['train']} train, {split['test']} test under {work}", flush=True)

    arch = architecture_args(init) if init else []
    main_extra = ["--init", str(init), *arch] if args.main_init and init else []
    main_run = train_run("main", train_dir, work / "runs" / "main", args.minutes, main_extra, args.seed)
    from caocrvfy.data import DataError

    try:
        score_caocrvfy(main_run, test_dir)
    except DataError as exc:
        print(f"cannot score caocrvfy: {exc}", file=sys.stderr)
        return 2

    curve = []
    sizes = sorted({min(int(s), len(train_names)) for s in args.curve.split(",") if s.strip()})
    for size in sizes:
        subset = make_side(root, work / f"train-{size}", train_names[:size], header, rows)
        for start, extra in [("scratch", arch)] + ([("init", ["--init", str(init), *arch])] if init else []):
            r = train_run(f"{size}-{start}", subset, work / "runs" / f"{size}-{start}", args.curve_minutes, extra,
                          args.seed)
            score_caocrvfy(r, test_dir)
            curve.append(r | {"size": size, "start": start})

    ocr, version = load_ddddocr()
    peer, peer_note = None, version
    if ocr is None:
        print(version)
    else:
        peer_note = f"ddddocr {version}"
        peer = score_ddddocr(ocr, test_dir)
        print(f"[ddddocr {version}] test full-match {peer['full_match']:.4f} ({peer['right']}/{peer['count']}), "
              f"char accuracy {peer['char_accuracy']:.4f}, {peer['errors']} exception(s)", flush=True)
    speed = time_readers(main_run, ocr, test_dir, args.speed_images) if main_run["ok"] else {}

    import keras
    import tensorflow as tf

    software = f"caocrvfy (Keras {keras.__version__}, TensorFlow {tf.__version__}), Python {platform.python_version()}"
    if peer:
        from importlib.metadata import version as pkg_version

        software += f", ddddocr {version} (onnxruntime {pkg_version('onnxruntime')})"
    text = report(args, root.name, split, main_run, peer, peer_note, speed, curve, started, host, software)
    (work / "results.json").write_text(json.dumps(
        {"split": split, "main": main_run, "ddddocr": peer, "speed": speed, "curve": curve}, indent=2, default=str))
    print("\n" + text)
    if args.write_benchmarks:
        write_section(args.write_benchmarks, f"## Own captchas: {root.name}", text)
        print(f"wrote the section to {args.write_benchmarks}")
    print(f"runs, logs and results.json: {work}")
    return 0 if main_run["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
