""""Train now": `caocrvfy train --data DIR --unlabelled DIR --init CURRENT` in a background process,
its progress read from the run folder's history.csv, and the new model handed back when it ends."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from caocrvfy.labelling.store import LabelError, LabelStore
from caocrvfy.labelling.suggestions import runs_of

log = logging.getLogger(__name__)

MIN_TRAIN_LABELS = 10  # fewer leave no validation images to choose the best epoch by
TRAIN_MINUTES = 10.0  # the --time-limit of "train now"


def train_command(store: LabelStore, init: Path, minutes: float, out: Path) -> list[str]:
    """The user's own training command for the folder, with its unlabelled images when any are left."""
    root = str(store.root)
    command = [sys.executable, "-m", "caocrvfy.train", "--data", root, "--init", str(init),
               "--time-limit", f"{minutes:g}", "--out", str(out)]
    if store.unlabelled():
        command += ["--unlabelled", root]
    if store.charset:
        command += ["--charset", store.charset]
    return command


def last_history_row(run: Path) -> dict | None:
    path = run / "history.csv"
    if not path.exists():
        return None
    with path.open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("epoch")]
    return rows[-1] if rows else None


class TrainJob:
    """At most one training at a time; `on_model(path)` is called with the new model when one
    ends well."""

    def __init__(self, store: LabelStore, on_model: Callable[[Path], None], minutes: float = TRAIN_MINUTES):
        self.store, self.on_model, self.minutes = store, on_model, minutes
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.run: Path | None = None
        self.started = 0.0
        self.state = "idle"  # idle, running, finished, failed
        self.message = ""

    def start(self, init: Path) -> dict:
        labelled = len(self.store.labelled())
        with self.lock:
            if self.state == "running":
                raise LabelError("a training is already running: wait for it to end.")
            if labelled < MIN_TRAIN_LABELS:
                raise LabelError(f"{labelled} image(s) labelled: label at least {MIN_TRAIN_LABELS} before training.")
            runs_of(self.store.root).mkdir(parents=True, exist_ok=True)
            self.run = runs_of(self.store.root) / time.strftime("%Y%m%d-%H%M%S")
            command = train_command(self.store, init, self.minutes, self.run)
            log_path = self.run.with_suffix(".log")
            with log_path.open("w") as out:
                self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            self.started, self.state = time.time(), "running"
            self.message = f"training on {labelled} labels, log {log_path}"
            log.info(f"{self.message}: {' '.join(command)}")
            threading.Thread(target=self._wait, args=(self.process, self.run), daemon=True).start()
            return self.status()

    def _wait(self, process: subprocess.Popen, run: Path) -> None:
        code = process.wait()
        model = run / "model.keras"
        ok = code == 0 and model.is_file()
        if ok:
            try:
                self.on_model(run)
            except Exception as exc:  # a model that does not load must not leave the page stuck
                log.exception(f"the new model {run} did not load")
                ok, code = False, f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.state = "finished" if ok else "failed"
            self.message = (f"trained {run.name}; its suggestions are shown now" if ok else
                            f"training ended without a model (exit {code}); see {run.with_suffix('.log')}")
        log.info(self.message)

    def status(self) -> dict:
        row = last_history_row(self.run) if self.run else None
        left = max(0.0, self.minutes * 60 - (time.time() - self.started)) if self.state == "running" else 0.0
        return {"state": self.state, "message": self.message, "run": self.run.name if self.run else None,
                "epoch": int(row["epoch"]) + 1 if row else None,
                "full_match": float(row["val_full_match"]) if row and row.get("val_full_match") else None,
                "seconds_left": round(left)}

    def stop(self) -> None:
        """Ends a running training as Ctrl-C would (it saves a checkpoint)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
