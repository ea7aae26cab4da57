"""What the benchmark scripts share: the machine's description, writing a result file, ddddocr,
and training then scoring one run in fresh processes.

Every benchmark imports only caocrvfy, third-party libraries and this module. A result goes to
`benchmarks/results/NAME-YYYY-MM-DD.json` (`--results-dir` elsewhere; `-2`, `-3`, ... are added
rather than overwriting a result of the same day), with the command line, machine, software and
date beside the figures.

Run as a script it scores one finished training run (a fresh process, so that several runs can
be scored at once): `python benchmarks/common.py score RUN TEST_DIR` writes RUN/scores.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"
LOAD_AT_START = os.getloadavg()[0]  # when this process imported common: before the measurement
NOISE = re.compile(r"absl::InitializeLog|cudart_stub|cuda_platform|cuInit|computation_placer|TF-TRT")
FALL_AFTER = 0.9  # the stability figure: the largest epoch-to-epoch fall of validation full-match after this


# ---------------------------------------------------------------- where and what


def machine() -> str:
    """CPU cores and model, memory, GPUs (from nvidia-smi, when there is one) and the load now."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or "unknown CPU")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # `nproc`
    parts = [f"{cores} CPU cores (`nproc`), {model}"]
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = next((int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemTotal")), 0)
        parts.append(f"{kib / 2**20:.0f} GiB")
    if shutil.which("nvidia-smi"):
        try:
            gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=20).stdout.split("\n")
            gpus = [g.strip() for g in gpus if g.strip()]
            if gpus:
                parts.append(f"{len(gpus)} GPU: {', '.join(sorted(set(gpus)))}")
        except (OSError, subprocess.SubprocessError):
            pass
    return "; ".join(parts) + f"; load average {LOAD_AT_START:.2f} at start"


def _package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def software() -> dict:
    """Versions of Python and the packages a measurement depends on (those installed)."""
    keras = sys.modules.get("keras")
    backend = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    found = {name: _package(name) for name in ("caocrvfy", "keras", "tensorflow", "jax", "onnxruntime", "captcha",
                                               "ddddocr")}
    return {"python": platform.python_version(), "keras_backend": backend,
            "oneDNN": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), **{k: v for k, v in found.items() if v}}


def add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the result JSON goes (default benchmarks/results/)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """DATA, --train-option, --work and --results-dir, for a benchmark that trains one run on
    split folders of a labelled folder."""
    parser.add_argument("data", type=Path, help="labelled folder (file-name labels or labels.csv)")
    add_results_option(parser)
    parser.add_argument("--train-option", action="append", default=[],
                        help="an option added to the training command (repeatable), e.g. --train-option=--seed=1")
    parser.add_argument("--work", type=Path, help="split folders and the run (default: a new temp folder)")


def start_run(parser: argparse.ArgumentParser, prefix: str) -> tuple[argparse.Namespace, Path, str, Path]:
    """Parses the options of `add_run_options` and the benchmark's own, turns on timed log
    lines, and returns (options, the labelled folder, the start time, the work folder)."""
    import logging

    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return args, args.data.resolve(), started, work_folder(args.work, prefix)


def work_folder(work: Path | None, prefix: str) -> Path:
    """WORK, made if missing, or a new temporary folder named PREFIX...; absolute."""
    folder = (work or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_result(name: str, results, results_dir: Path = RESULTS_DIR, started: str | None = None) -> Path:
    """Writes `results` as results_dir/NAME-YYYY-MM-DD.json (UTC date) with the command line,
    machine, software and time; returns the path."""
    now = time.gmtime()
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y-%m-%d', now)}"
    path, n = results_dir / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = results_dir / f"{stem}-{n}.json"
    record = {
        "benchmark": name,
        "command": shlex.join(["python", _script_path(), *sys.argv[1:]]),
        "date": started or time.strftime("%Y-%m-%d %H:%M UTC", now),
        "machine": machine(),
        "software": software(),
        "results": results,
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"results: {path}")
    return path


def read_results(path: Path):
    """The figures of a result file: what `write_result` wrote, or an older bare list."""
    data = json.loads(Path(path).read_text())
    return data["results"] if isinstance(data, dict) and "results" in data else data


def _script_path() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        return str(script.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(script)


# ---------------------------------------------------------------- ddddocr


def load_ddddocr():
    """The ddddocr reader and its version, or (None, reason) when it is not installed."""
    try:
        import ddddocr
    except ImportError as exc:
        return None, f"ddddocr is not installed ({exc}); `pip install ddddocr` to add its columns"
    return ddddocr.DdddOcr(show_ad=False), version("ddddocr")


# ---------------------------------------------------------------- training runs


def slug(name: str) -> str:
    """A run folder's name for a variant's name."""
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def module_command(module: str, *args: str) -> list[str]:
    """`python -P -m MODULE ARGS` for a child process. Without -P, `-m` puts the current folder
    first on sys.path, so that run in the project's folder it imports the project's package even
    when PYTHONPATH names a changed copy (an experiment); `module_env` puts the project after it."""
    return [sys.executable, "-P", "-m", module, *args]


def module_env(env: dict | None = None) -> dict:
    """ENV (default: this process's) with the project's folder last on PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(PROJECT_ROOT)) if p)
    return env


def training_env(parallel: int = 1) -> dict:
    """The environment of a training process; with several at once on JAX, each gets its share
    of the GPU's memory (JAX would otherwise give the first one most of it)."""
    env = module_env(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1"))
    if parallel > 1:
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / parallel:.2f}")
    return env


def train_run(name: str, options: list[str], out: Path, env: dict | None = None, echo: bool = False) -> dict:
    """Runs `python -m caocrvfy.train OPTIONS --out OUT` in a fresh process (an older OUT is
    replaced), its output in OUT/train.log (and, with `echo`, on the terminal: TensorFlow's
    start-up lines left out, an epoch line at most every 30 s). Returns the run folder, whether
    it finished, its wall time, epochs and the layers copied by --init."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = module_command("caocrvfy.train", *options, "--out", str(out))
    if echo:
        print(f"[{name}] {shlex.join(cmd)}", flush=True)
    epochs, copied, shown = 0, None, 0.0
    start = time.perf_counter()
    with (out / "train.log").open("w") as log, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or training_env(), cwd=PROJECT_ROOT
    ) as proc:
        for line in proc.stdout:
            log.write(line)
            is_epoch = re.search(r"\bepoch +\d+/", line) is not None
            epochs += is_epoch
            if m := re.search(r"initialised (\d+) layers", line):
                copied = int(m[1])
            now = time.perf_counter()
            if not echo or NOISE.search(line):
                continue
            if not is_epoch or now - shown > 30:
                shown = now if is_epoch else shown
                print(f"[{name}] {line.rstrip()}", flush=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # only needed to resume
    ok = proc.returncode == 0 and (out / "model.keras").exists()
    print(f"[{name}] exit {proc.returncode} after {seconds:.0f} s" + ("" if echo else f": {shlex.join(cmd)}")
          + ("" if ok else f"; training failed, see {out / 'train.log'}"), flush=True)
    run, fall = {}, None
    if ok:
        from caocrvfy.model_config import read_config

        run = read_config(out / "config.json")["run"]
        with (out / "history.csv").open() as f:
            fall = largest_fall([float(row["val_full_match"]) for row in csv.DictReader(f) if row.get("val_full_match")])
    return {"name": name, "run": str(out), "ok": ok, "seconds": seconds, "epochs": epochs, "layers_copied": copied,
            "train_images": run.get("train_images"), "val_images": run.get("val_images"), "largest_val_fall": fall}


def largest_fall(series: list[float], above: float = FALL_AFTER) -> float | None:
    """The largest drop between consecutive values after the first one at or above `above`
    (None if none is): the stability figure of BENCHMARKS.md."""
    start = next((i for i, v in enumerate(series) if v >= above), None)
    if start is None:
        return None
    return max([0.0] + [a - b for a, b in zip(series[start:], series[start + 1:])])


def score(run: Path, test_dir: Path) -> dict:
    """Test figures of a finished run (read by its Predictor, scored by caocrvfy.evaluation.scores:
    full-match, character accuracy, and precision and recall over all characters), its best
    validation loss (metrics.json) and its last epoch's train/validation loss ratio."""
    from caocrvfy.evaluation import read_labelled_folder
    from caocrvfy.evaluation.scores import char_accuracy, char_metrics, full_match
    from caocrvfy.inference import Predictor

    records, _, skipped = read_labelled_folder(Predictor.load(run), test_dir)
    rows = char_metrics(records)
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    with (Path(run) / "history.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    validation = json.loads((Path(run) / "metrics.json").read_text())
    return {"full_match": full_match(records), "char_accuracy": char_accuracy(records),
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "test_images": len(records),
            "skipped": len(skipped), "val_loss": validation["loss"],
            "ratio": float(last["loss"]) / float(last["val_loss"])}


def train_and_score(name: str, options: list[str], out: Path, test_dir: Path, env: dict | None = None) -> dict:
    """`train_run`, then `score` in a fresh process (so that runs trained at once also score at once)."""
    result = train_run(name, options, out, env)
    if result["ok"]:
        with (Path(out) / "train.log").open("a") as log:
            subprocess.call([sys.executable, str(Path(__file__).resolve()), "score", str(out), str(test_dir)],
                            stdout=log, stderr=subprocess.STDOUT, env=env or training_env(), cwd=PROJECT_ROOT)
        scores = Path(out) / "scores.json"
        if scores.exists():
            result |= json.loads(scores.read_text())
    return result


def draw_fixed_sets(out: Path, spec, train_size: int, val_size: int, test_size: int) -> tuple[Path, Path]:
    """Draws the training and validation captchas into a cache under OUT (where `caocrvfy train
    --cache-dir OUT/cache` finds them), before any run starts, so that all runs train on the same
    ones; and a test set under OUT/test that no run trains on. Returns (cache dir, test dir)."""
    from caocrvfy.data.synthetic import cache_folder, generate

    cache = Path(out) / "cache"
    for split, count in (("train", train_size), ("val", val_size)):
        generate(cache_folder(cache, spec, split), count, spec)
    return cache, generate(Path(out) / "test", test_size, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Scores one finished run: writes RUN/scores.json.")
    p.add_argument("command", choices=["score"])
    p.add_argument("run", type=Path)
    p.add_argument("test_dir", type=Path)
    args = p.parse_args(argv)
    (args.run / "scores.json").write_text(json.dumps(score(args.run, args.test_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
