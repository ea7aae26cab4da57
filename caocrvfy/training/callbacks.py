"""Training callbacks: warmup, time limit, per-epoch log line, and resumable checkpoints.

Checkpoints are written to a temporary name and renamed, so an interrupted run never leaves
a half-written model; `state.json` holds what the callbacks need to carry on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import keras

log = logging.getLogger(__name__)

MONITOR = "val_full_match"


def save_model_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(path.stem + "-partial.keras")
    model.save(tmp)
    os.replace(tmp, path)


def write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


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
    """One line per epoch: losses, validation string metrics, rate and time."""

    def __init__(self, epochs: int):
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
        log.info(
            f"epoch {epoch + 1:3d}/{self.epochs} loss={logs.get('loss', math.nan):.4f}{terms} "
            f"val_loss={logs.get('val_loss', math.nan):.4f} "
            f"full_match={logs.get('val_full_match', math.nan):.4f} "
            f"char_acc={logs.get('val_char_accuracy', math.nan):.4f} "
            f"precision={logs.get('val_precision', math.nan):.4f} "
            f"recall={logs.get('val_recall', math.nan):.4f} "
            f"lr={self.lr:.2e} time={time.monotonic() - self.start:.1f}s"
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


def _loss_or_inf(loss: float | None) -> float:
    """An unknown or NaN loss counts as infinite: it never wins a tie."""
    return loss if loss is not None and math.isfinite(loss) else math.inf


class Checkpoints(keras.callbacks.Callback):
    """Saves the best model as model.keras and, every epoch, the last model with its optimizer
    plus state.json, so `--resume` loses at most the epoch in progress.

    Best means the highest `MONITOR`; on a tie, the lower validation loss. Small validation
    sets reach 100% full-match early, and the loss still tells the later, better epochs apart.
    """

    def __init__(self, run_dir: Path, early_stopping: ResumableEarlyStopping,
                 plateau: ResumableReduceLROnPlateau, best: float | None = None, best_loss: float | None = None,
                 trained_seconds: float = 0.0):
        super().__init__()
        self.run_dir = run_dir
        self.early_stopping, self.plateau = early_stopping, plateau
        self.best, self.best_loss = best, best_loss
        self.trained_before = trained_seconds

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def is_better(self, score: float, loss: float | None) -> bool:
        if self.best is None or score > self.best:
            return True
        return score == self.best and _loss_or_inf(loss) < _loss_or_inf(self.best_loss)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score, loss = logs.get(MONITOR), logs.get("val_loss")
        if score is not None and self.is_better(float(score), None if loss is None else float(loss)):
            self.best, self.best_loss = float(score), None if loss is None else float(loss)
            save_model_atomic(self.model, self.run_dir / "model.keras")
        save_model_atomic(self.model, self.run_dir / "last.keras")
        write_json_atomic(
            {
                "epoch": epoch + 1,
                "best": self.best,
                "best_loss": self.best_loss,
                "learning_rate": current_lr(self.model),
                "early_stopping": self.early_stopping.state(),
                "plateau": self.plateau.state(),
                "trained_seconds": round(self.trained_before + time.monotonic() - self.start, 1),
            },
            self.run_dir / "state.json",
        )
