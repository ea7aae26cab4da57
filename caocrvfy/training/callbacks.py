"""Training callbacks: warmup, time limit, per-epoch log line, and resumable checkpoints.

The models, state and JSON files are written under a temporary name, flushed to disk (fsync)
and renamed, so a run killed at any moment (SIGKILL included) never leaves one half-written
under its final name (history.csv is appended by Keras's CSVLogger, `HistoryLogger`;
`trim_history` mends it). The checkpoint for --resume is one folder, `checkpoint/`, holding
`last.keras` (the model with its optimizer) and `state.json` (what the callbacks need to carry
on, with the epoch and the size and SHA-256 of the `last.keras` it belongs to). It is written
whole as `checkpoint.partial/` and swapped in by two renames (the old one to `checkpoint.old/`, the new
one into place), so the run folder always holds one whole checkpoint: `checkpoint/`, or after a
kill between the renames `checkpoint.old/` (`find_checkpoint`). The best model, `model.keras`,
is written after the checkpoint that names its epoch, so a resume can redo it (`repair_best`);
history.csv rows logged after the checkpoint are dropped on resume (`trim_history`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import keras

from caocrvfy.errors import DataError
from caocrvfy.files import fsync, write_text_atomic
from caocrvfy.startup import captured_native_stderr
from caocrvfy.training import interrupts

log = logging.getLogger(__name__)

MONITOR = "val_full_match"
CHECKPOINT, LAST, STATE = "checkpoint", "last.keras", "state.json"
PARTIAL, OLD = CHECKPOINT + ".partial", CHECKPOINT + ".old"


def save_model_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(path.stem + "-partial.keras")  # Keras wants the .keras ending
    model.save(tmp)
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def _fingerprint(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A whole checkpoint: the folder holding last.keras and the state.json that belongs to it."""

    folder: Path
    state: dict

    @property
    def model_path(self) -> Path:
        return self.folder / LAST


def save_checkpoint(model: keras.Model, state: dict, run_dir: Path) -> None:
    """Writes `checkpoint/` anew; whenever this is killed, a whole checkpoint remains."""
    final, partial, old = run_dir / CHECKPOINT, run_dir / PARTIAL, run_dir / OLD
    shutil.rmtree(partial, ignore_errors=True)  # left by a kill: never read
    partial.mkdir()
    model.save(partial / LAST)
    fsync(partial / LAST)
    state = {**state, "last_keras": _fingerprint(partial / LAST)}
    (partial / STATE).write_text(json.dumps(state, indent=2, default=float))
    fsync(partial / STATE)
    fsync(partial)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # only ever removed while checkpoint/ is whole
        os.replace(final, old)
    os.replace(partial, final)
    fsync(run_dir)
    shutil.rmtree(old, ignore_errors=True)
    for legacy in (LAST, STATE):  # a run folder from before checkpoint/, now resumed
        (run_dir / legacy).unlink(missing_ok=True)


def _read_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint in `folder`; ValueError or OSError says why it is not whole."""
    state = json.loads((folder / STATE).read_text())
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError(f"{folder / STATE} names no epoch")
    if not (folder / LAST).is_file():
        raise ValueError(f"{folder / LAST} is missing")
    expected = state.get("last_keras")  # absent in run folders written before checkpoint/
    if expected is not None and _fingerprint(folder / LAST) != expected:
        raise ValueError(f"{folder / LAST} is not the file its state.json (epoch {state['epoch']}) belongs to")
    return Checkpoint(folder, state)


def _checkpoint_folders(run_dir: Path) -> list[Path]:
    """Where a checkpoint may be, newest layout first: folders that hold a state.json."""
    return [folder for folder in (run_dir / CHECKPOINT, run_dir / OLD, run_dir) if (folder / STATE).exists()]


def has_checkpoint(run_dir: Path) -> bool:
    """Whether an epoch of this run folder was saved (whole or not, the folder is worth keeping)."""
    return bool(_checkpoint_folders(run_dir))


def find_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's whole checkpoint: `checkpoint/`, else `checkpoint.old/` (a kill between the two
    renames of `save_checkpoint`), else last.keras and state.json at the top (run folders written
    before checkpoint/). None when there is none; DataError when one is there but broken. Reads only."""
    problems = []
    for folder in _checkpoint_folders(run_dir):
        try:
            return _read_checkpoint(folder)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
    if problems:
        raise DataError(f"{run_dir} holds no whole checkpoint ({'; '.join(problems)}): start a new training instead.")
    return None


def tidy_checkpoints(run_dir: Path) -> None:
    """Leaves exactly one checkpoint folder, `checkpoint/`, and no temporary files: what a kill
    may have left (a partial checkpoint or model, `checkpoint.old/`) is removed or put in place."""
    final, old = run_dir / CHECKPOINT, run_dir / OLD
    shutil.rmtree(run_dir / PARTIAL, ignore_errors=True)
    for tmp in run_dir.glob("*-partial.keras"):
        tmp.unlink(missing_ok=True)
    for tmp in run_dir.glob("*.partial"):
        if tmp.is_file():
            tmp.unlink()
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
            fsync(run_dir)


def repair_best(checkpoint: Checkpoint, best_model: Path) -> None:
    """model.keras is written just after the checkpoint whose epoch it is: when that epoch is
    the checkpoint's own, the run may have been killed in between, so it is copied again."""
    if checkpoint.state.get("best_epoch") != checkpoint.state["epoch"]:
        return
    tmp = best_model.with_name(best_model.stem + "-partial.keras")
    shutil.copyfile(checkpoint.model_path, tmp)
    fsync(tmp)
    os.replace(tmp, best_model)
    fsync(best_model.parent)


def trim_history(path: Path, epochs: int) -> None:
    """Keeps history.csv's header and its whole rows of the first `epochs` epochs: a run killed
    after logging an epoch but before its checkpoint was whole logs that epoch again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    first = [line.split(",", 1)[0] for line in lines]
    kept = lines[:1] + [line for line, epoch in zip(lines[1:], first[1:])
                        if line.endswith("\n") and epoch.isdigit() and int(epoch) < epochs]
    if kept != lines:
        write_text_atomic("".join(kept), path)


class HistoryLogger(keras.callbacks.CSVLogger):
    """Keras's CSVLogger, appending on --resume, that keeps history.csv's columns named: when a
    resumed run logs other values than the run it continues (a newer caocrvfy, other options),
    the file is rewritten once under the header of both, each earlier value kept under its
    name and an empty cell where a run did not log it. Keras's own keeps the first header and
    writes the new rows under it, one column shifted from where the header says."""

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and self.append and not self.append_header:
            self._merge_header(sorted((logs or {}).keys()))
        super().on_epoch_end(epoch, logs)

    def _merge_header(self, keys: list[str]) -> None:
        path = Path(self.filename)
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh, delimiter=self.sep)
            rows, header = list(reader), reader.fieldnames or []
        if not header or header == ["epoch", *keys]:
            return
        names = sorted((set(header) | set(keys)) - {"epoch"})
        out = io.StringIO()
        writer = csv.DictWriter(out, ["epoch", *names], restval="", extrasaction="ignore",
                                delimiter=self.sep)  # Keras's dialect
        writer.writeheader()
        writer.writerows(rows)
        self.csv_file.close()
        write_text_atomic(out.getvalue(), path)
        self.csv_file = path.open("a")
        self.keys = names


def settle(run_dir: Path) -> Checkpoint | None:
    """At the end of a run, which an interrupt or a failure may have ended in the middle of a
    save: one whole checkpoint, model.keras and history.csv as they belong to it, and no
    temporary files."""
    tidy_checkpoints(run_dir)
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is not None:
        repair_best(checkpoint, run_dir / "model.keras")
        trim_history(run_dir / "history.csv", checkpoint.state["epoch"])
    return checkpoint


def current_lr(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class _StepCallback(keras.callbacks.Callback):
    """Knows the optimizer step a batch begins at, also when Keras runs several steps per call
    (`steps_per_execution`) and calls the batch hooks once per call with the first step's index."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def step_of(self, batch: int) -> int:
        return self.epoch_start + batch


class LinearWarmup(_StepCallback):
    """Raises the rate linearly to `target_lr` over `warmup_steps` optimizer steps.

    The first step already trains at target_lr / warmup_steps (> 0); after warmup the rate
    is left alone, so ReduceLROnPlateau owns it.
    """

    def __init__(self, target_lr: float, warmup_steps: int):
        super().__init__()
        self.target_lr = target_lr
        self.warmup_steps = max(int(warmup_steps), 0)

    warming = False

    def on_train_batch_begin(self, batch, logs=None):
        step = self.step_of(batch)
        if step < self.warmup_steps:
            self.model.optimizer.learning_rate = self.target_lr * (step + 1) / self.warmup_steps
            self.warming = True
        elif self.warming:  # with several steps per call the last warmup step may not begin a call
            self.model.optimizer.learning_rate = self.target_lr
            self.warming = False


class CosineToBudget(_StepCallback):
    """Cosine decay from `peak_lr` to `floor_lr` over the run's budget: the time limit when
    one is set (the fraction of time used), else the epochs. Starts after warmup."""

    def __init__(self, peak_lr: float, floor_lr: float, warmup_steps: int, epochs: int, steps_per_epoch: int,
                 minutes: float | None, already: float = 0.0):
        super().__init__()
        self.peak_lr, self.floor_lr = peak_lr, floor_lr
        self.warmup_steps, self.total_steps = warmup_steps, epochs * steps_per_epoch
        self.seconds = None if minutes is None else minutes * 60
        self.already = already  # seconds trained before a --resume: the decay goes on from there

    def on_train_begin(self, logs=None):
        self.start = time.monotonic() - self.already

    def on_train_batch_begin(self, batch, logs=None):
        step = self.step_of(batch) + 1
        if step <= self.warmup_steps:
            return
        if self.seconds:
            done = (time.monotonic() - self.start) / self.seconds
        else:
            done = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        done = min(max(done, 0.0), 1.0)
        lr = self.floor_lr + 0.5 * (self.peak_lr - self.floor_lr) * (1 + math.cos(math.pi * done))
        self.model.optimizer.learning_rate = lr


class TimeLimit(keras.callbacks.Callback):
    """Stops training cleanly (the epoch is cut short, then validated) after `minutes`.

    It looks at the clock when a batch begins, not when one ends: a callback with a batch-end
    hook makes Keras turn every step's logs into Python numbers, which waits for the device after
    each step and so keeps a GPU idle while the next batch is prepared.
    """

    def __init__(self, minutes: float | None, already: float = 0.0):
        super().__init__()
        self.seconds = None if minutes is None else minutes * 60
        self.already = already  # seconds trained before a --resume count against the limit
        self.reached = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic() - self.already

    def on_train_batch_begin(self, batch, logs=None):
        if self.seconds is not None and not self.reached and time.monotonic() - self.start > self.seconds:
            log.info(f"time limit of {self.seconds / 60:g} min reached: stopping after this epoch's validation")
            self.reached = True
            self.model.stop_training = True


class EpochLog(keras.callbacks.Callback):
    """One line per epoch: losses, validation string metrics, rate and time. The rate is the one
    the epoch starts with (also logged as `lr`), and where warmup or a decay moved it within the
    epoch, `first..last`. `epochs`: the run's count, None where the time limit ends it."""

    def __init__(self, epochs: int | None):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.monotonic()
        self.lr = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.lr is None:  # after the warmup and schedule callbacks have set this epoch's rate
            self.lr = current_lr(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        terms = " ".join(f"{k[:-5]}={logs[k]:.4f}" for k in logs if k.endswith("_term") and not k.startswith("val_"))
        terms = f" ({terms})" if terms else ""
        last = current_lr(self.model)
        rate = f"{self.lr:.2e}" if math.isclose(last, self.lr, rel_tol=0.01) else f"{self.lr:.2e}..{last:.2e}"
        log.info(
            f"epoch {epoch + 1:3d}{f'/{self.epochs}' if self.epochs else ''} loss={logs.get('loss', math.nan):.4f}{terms} "
            f"val_loss={logs.get('val_loss', math.nan):.4f} "
            f"full_match={logs.get('val_full_match', math.nan):.4f} "
            f"char_acc={logs.get('val_char_accuracy', math.nan):.4f} "
            f"precision={logs.get('val_precision', math.nan):.4f} "
            f"recall={logs.get('val_recall', math.nan):.4f} "
            f"lr={rate} time={time.monotonic() - self.start:.1f}s"
        )
        logs["lr"] = self.lr


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters and best weights survive a restart."""

    def __init__(self, *args, state: dict | None = None, best_model: Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_state = state or {}
        self.best_model = best_model

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume_state:
            self.wait = self.resume_state["wait"]
            self.best = self.resume_state["best"]
            self.best_epoch = self.resume_state["best_epoch"]
            if self.restore_best_weights and self.best_model and self.best_model.exists():
                self.best_weights = keras.models.load_model(self.best_model, compile=False).get_weights()
            self.resume_state = {}

    def state(self) -> dict:
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch}


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a restart; records each reduction's epoch."""

    def __init__(self, *args, state: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_state = state or {}
        self.reductions: list[int] = list(self.resume_state.get("reductions", []))

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume_state:
            self.wait = self.resume_state["wait"]
            self.best = self.resume_state["best"]
            self.cooldown_counter = self.resume_state["cooldown_counter"]
            self.resume_state = {}

    def on_epoch_end(self, epoch, logs=None):
        before = current_lr(self.model)
        super().on_epoch_end(epoch, logs)
        if current_lr(self.model) < before:
            self.reductions.append(epoch + 1)

    def state(self) -> dict:
        return {"wait": self.wait, "best": self.best, "cooldown_counter": self.cooldown_counter,
                "reductions": self.reductions}


class FirstStepLines(keras.callbacks.Callback, contextlib.AbstractContextManager):
    """Catches TensorFlow's native lines during the first training step, when the graph first
    runs (caocrvfy.startup; lines of Python's own logging pass on). Also a context manager to
    put around `fit`: a failure in that step replays what was caught."""

    def __init__(self):
        super().__init__()
        self._catching = contextlib.ExitStack()
        self._started = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self._started:
            self._started = True
            self._catching.enter_context(captured_native_stderr(pass_on=True))

    def on_train_batch_end(self, batch, logs=None):
        self._catching.close()

    def __exit__(self, *exc_info):
        return self._catching.__exit__(*exc_info)


class PendingInterrupt(keras.callbacks.Callback):
    """Raises a Ctrl-C or SIGTERM whose first raise a finalizer dropped (training/interrupts.py)
    before the next step and after each epoch's save: put it after Checkpoints."""

    def on_train_batch_begin(self, batch, logs=None):
        interrupts.raise_pending()

    def on_test_batch_begin(self, batch, logs=None):
        interrupts.raise_pending()

    def on_epoch_end(self, epoch, logs=None):
        interrupts.raise_pending()


def _loss_or_inf(loss: float | None) -> float:
    """An unknown or NaN loss counts as infinite: it never wins a tie."""
    return loss if loss is not None and math.isfinite(loss) else math.inf


class Checkpoints(keras.callbacks.Callback):
    """Every epoch, saves the checkpoint (the last model with its optimizer, and state.json) and,
    when the epoch is the best so far, model.keras, so `--resume` loses at most the epoch in
    progress.

    Best means the highest `MONITOR`; on a tie, the lower validation loss. Small validation
    sets reach 100% full-match early, and the loss still tells the later, better epochs apart.
    With `keep_last` (a handful of validation images, which tell no epochs apart) every epoch
    replaces model.keras. `saved`: the checkpoints written by this run.
    """

    def __init__(self, run_dir: Path, early_stopping: ResumableEarlyStopping,
                 plateau: ResumableReduceLROnPlateau, best: float | None = None, best_loss: float | None = None,
                 trained_seconds: float = 0.0, best_epoch: int | None = None, keep_last: bool = False):
        super().__init__()
        self.keep_last = keep_last
        self.run_dir = run_dir
        self.early_stopping, self.plateau = early_stopping, plateau
        self.best, self.best_loss, self.best_epoch = best, best_loss, best_epoch
        self.trained_before = trained_seconds
        self.saved = 0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def is_better(self, score: float, loss: float | None) -> bool:
        if self.keep_last or self.best is None or score > self.best:
            return True
        return score == self.best and _loss_or_inf(loss) < _loss_or_inf(self.best_loss)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score, loss = logs.get(MONITOR), logs.get("val_loss")
        better = score is not None and self.is_better(float(score), None if loss is None else float(loss))
        if better:
            self.best, self.best_loss = float(score), None if loss is None else float(loss)
            self.best_epoch = epoch + 1
        state = {
            "epoch": epoch + 1,
            "best": self.best,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,  # model.keras's epoch
            "learning_rate": current_lr(self.model),
            "early_stopping": self.early_stopping.state(),
            "plateau": self.plateau.state(),
            "trained_seconds": round(self.trained_before + time.monotonic() - self.start, 1),
        }
        best_model = self.run_dir / "model.keras"
        # The best model goes after the checkpoint naming its epoch (a kill in between leaves the
        # previous best, and a resume writes this one), except the first, so that a checkpoint
        # never comes without a best model beside it.
        first = better and not best_model.exists()
        if first:
            save_model_atomic(self.model, best_model)
        save_checkpoint(self.model, state, self.run_dir)
        self.saved += 1
        if better and not first:
            save_model_atomic(self.model, best_model)
