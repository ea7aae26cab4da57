"""Train on your own captchas, side by side with ddddocr.

    python benchmarks/own_captchas.py DATA_DIR                                                 # 12 min + curve
    python benchmarks/own_captchas.py DATA_DIR --minutes 0.5 --curve 100 --curve-minutes 0.3   # smoke run

Works on any labelled folder (label = file name up to the first `_` or `.`, or `labels.csv`),
as `caocrvfy.data.folders.read_folder` reads it. Sorted by file name, every 5th item is test and
the rest train; both sides are folders under --work of hard links (or copies) with a labels.csv
of their items. caocrvfy is trained on the train side by the project's own command (`python -m
caocrvfy.train --data ... --ignore-case --schedule cosine`, one fresh process per run, its wall
time measured; early stopping and the epoch cap are lifted so the time budget ends every run)
and scored on the test side with `caocrvfy.evaluation.evaluate_folder`.
ddddocr (`pip install ddddocr`), pretrained and untrained here, reads the same test files one
at a time; its reads are compared case-folded and an exception counts as a wrong read.
Reading speed of both is timed one after the other in this process.

The learning curve trains on the first N train files, from scratch and from --init (a model
trained on synthetic captchas), both with the init model's architecture so that only the
starting weights differ.

The report is printed, and everything measured is written to
benchmarks/results/own-captchas-FOLDER-DATE.json.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path

import common

PROJECT_ROOT = common.PROJECT_ROOT


# ---------------------------------------------------------------- split


def list_items(root: Path) -> list[tuple[str, str]]:
    """(name inside the folder, label) of every labelled item, sorted by name, as
    `caocrvfy.data.folders.read_folder` reads them (its skipped items are listed)."""
    from caocrvfy.data.folders import read_folder

    found = read_folder(root)
    for name, reason in found.skipped:
        print(f"  {name}: skipped, {reason}")
    items: dict[str, str] = {}
    for path, label in zip(found.paths, found.labels):
        items.setdefault(path.relative_to(root).as_posix(), label)  # labels.csv: the first row of a file
    return sorted(items.items())


def split_test(items: list) -> tuple[list, list]:
    """(train, test): sorted by name, every 5th item is a test item."""
    return [n for i, n in enumerate(items) if i % 5 != 4], [n for i, n in enumerate(items) if i % 5 == 4]


def make_side(root: Path, dest: Path, items: list[tuple[str, str]]) -> Path:
    """A folder of `items` with their labels in labels.csv, replacing an older one. The files are
    hard links to the originals (copies on another file system): `read_folder` refuses a symlink
    that leads out of the folder."""
    import csv
    import os

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    kept = []
    for name, label in items:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            print(f"  {name}: skipped, labels.csv names must be paths inside the folder")
            continue
        kept.append((name, label))
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / name, dest / name)
        except OSError:
            shutil.copy2(root / name, dest / name)
    with (dest / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        writer.writerows(kept)
    return dest


# ---------------------------------------------------------------- caocrvfy


def architecture_args(init: Path) -> list[str]:
    """Training flags that rebuild the init model's architecture (the fields `--init` adopts,
    caocrvfy.model_config.ARCHITECTURE, and its head), so that a run from scratch has the same one."""
    from caocrvfy.model_config import ARCHITECTURE, load_model_config

    config = load_model_config(init.with_name("config.json"))
    args = ["--head", config.head]
    for key in ARCHITECTURE:
        value = getattr(config, key)
        if key == "attention":
            args += [] if value else ["--no-attention"]
        else:
            args += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if key == "filters" else str(value)]
    return args


def train_run(name: str, data: Path, out: Path, minutes: float, extra: list[str], seed: int) -> dict:
    """`python -m caocrvfy.train` in a fresh process, early stopping and the epoch cap lifted so
    that the time budget ends the run; returns its run folder and timings."""
    options = ["--data", str(data), "--ignore-case", "--time-limit", f"{minutes:g}", "--schedule", "cosine",
               "--patience", "1000000", "--epochs", "1000000", "--seed", str(seed), *extra]
    return common.train_run(name, options, out, echo=True) | {"minutes": minutes}


def score_caocrvfy(run: dict, test_dir: Path) -> None:
    """Adds the test-split scores of a finished run to `run`."""
    from caocrvfy.evaluation import evaluate_folder
    from caocrvfy.inference import Predictor

    if not run["ok"]:
        return
    result = evaluate_folder(Predictor.load(run["run"]), test_dir, ignore_case=True)
    for item in result["skipped"]:
        print(f"  caocrvfy skipped {item['file']}: {item['reason']}")
    run.update(full_match=result["full_match"], char_accuracy=result["char_accuracy"], count=result["count"],
               right=round(result["full_match"] * result["count"]), skipped=result["skipped"], wrong=result["wrong"])
    print(f"[{run['name']}] test full-match {result['full_match']:.4f} ({run['right']}/{result['count']}), "
          f"char accuracy {result['char_accuracy']:.4f}, {run['seconds']:.0f} s training wall time", flush=True)
    for item in result["wrong"]:
        print(f"  wrong: {item['file']} {item['label']} read as {item['read']} ({item['confidence']:.4f})")


# ---------------------------------------------------------------- ddddocr


def read_ddddocr(reader, path: Path) -> str | None:
    try:
        return reader.classification(path.read_bytes()).lower()
    except Exception:  # a file it cannot read is a wrong read
        return None


def score_ddddocr(reader, test_dir: Path) -> dict:
    from caocrvfy.data.folders import read_folder
    from caocrvfy.evaluation.scores import char_accuracy, full_match

    found = read_folder(test_dir, ignore_case=True)
    reads = [read_ddddocr(reader, p) for p in found.paths]
    records = [(truth, read or "", 0.0) for truth, read in zip(found.labels, reads)]
    return {"full_match": full_match(records), "char_accuracy": char_accuracy(records), "count": len(records),
            "right": sum(t == p for t, p, _ in records), "errors": sum(p is None for p in reads)}


# ---------------------------------------------------------------- speed


def rate(fn, items: list) -> float:
    start = time.perf_counter()
    fn(items)
    return len(items) / (time.perf_counter() - start)


def time_readers(run: dict, ocr, test_dir: Path, limit: int) -> dict:
    """Images per second, file to text, one reader after the other on the same files."""
    from caocrvfy.data.folders import read_folder
    from caocrvfy.inference import Predictor

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
    common.add_results_option(p)
    args = p.parse_args()
    started, host = time.strftime("%Y-%m-%d %H:%M %Z"), common.machine()
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
    work = common.work_folder(args.work, "caocrvfy-own-")

    from caocrvfy.errors import DataError

    try:
        items = list_items(root)
    except DataError as exc:
        print(exc, file=sys.stderr)
        return 2
    train_items, test_items = split_test(items)
    if not train_items or not test_items:
        print(f"{root} has {len(items)} labelled item(s): at least 2 are needed, one for each side.", file=sys.stderr)
        return 2
    train_dir = make_side(root, work / "train", train_items)
    test_dir = make_side(root, work / "test", test_items)
    split = {"train": len(train_items), "test": len(test_items)}
    print(f"{root}: {len(items)} items -> {split['train']} train, {split['test']} test under {work}", flush=True)

    arch = architecture_args(init) if init else []
    main_extra = ["--init", str(init), *arch] if args.main_init and init else []
    main_run = train_run("main", train_dir, work / "runs" / "main", args.minutes, main_extra, args.seed)
    try:
        score_caocrvfy(main_run, test_dir)
    except DataError as exc:
        print(f"cannot score caocrvfy: {exc}", file=sys.stderr)
        return 2

    curve = []
    sizes = sorted({min(int(s), len(train_items)) for s in args.curve.split(",") if s.strip()})
    for size in sizes:
        subset = make_side(root, work / f"train-{size}", train_items[:size])
        for start, extra in [("scratch", arch)] + ([("init", ["--init", str(init), *arch])] if init else []):
            r = train_run(f"{size}-{start}", subset, work / "runs" / f"{size}-{start}", args.curve_minutes, extra,
                          args.seed)
            score_caocrvfy(r, test_dir)
            curve.append(r | {"size": size, "start": start})

    ocr, version = common.load_ddddocr()
    peer, peer_note = None, version
    if ocr is None:
        print(version)
    else:
        peer_note = f"ddddocr {version}"
        peer = score_ddddocr(ocr, test_dir)
        print(f"[ddddocr {version}] test full-match {peer['full_match']:.4f} ({peer['right']}/{peer['count']}), "
              f"char accuracy {peer['char_accuracy']:.4f}, {peer['errors']} exception(s)", flush=True)
    speed = time_readers(main_run, ocr, test_dir, args.speed_images) if main_run["ok"] else {}

    software = ", ".join(f"{k} {v}" for k, v in common.software().items())
    text = report(args, root.name, split, main_run, peer, peer_note, speed, curve, started, host, software)
    print("\n" + text)
    common.write_result(f"own-captchas-{common.slug(root.name)}", {
        "folder": str(root), "split": split, "main": main_run, "ddddocr": peer, "speed": speed, "curve": curve},
        args.results_dir, started)
    print(f"runs and logs: {work}")
    return 0 if main_run["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
