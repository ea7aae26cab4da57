"""Validation figures as `caocrvfy predict` reads: the epoch kept is the one the user gets.

The metrics compiled into the model decode CTC greedily (per-step argmax, repeats merged,
blanks dropped). `predict` holds a fixed-length model (every training label had the same
length) to that length: a greedy reading of another length is replaced by the best path of
that length (caocrvfy.inference.decoding). The two can differ by far: on captcha-images-v2,
while BatchNorm statistics still lagged, the greedy validation full-match fell 61.1 points in
one epoch while the test reads fell 5.3 (docs/notes/2026-12-03-stability.md). Early stopping
and the best model then followed the greedy figure. `PredictedValidation` reads the
validation images with `decode_outputs` after each epoch and puts its figures in the logs in
place of the greedy ones (kept as `val_greedy_full_match`).
"""

from __future__ import annotations

import keras
import numpy as np

from caocrvfy.data.charset import decode_indices
from caocrvfy.evaluation import scores
from caocrvfy.inference.decoding import Prediction, decode_outputs
from caocrvfy.model_config import ModelConfig

READ_BATCH = 256


def read_images(model: keras.Model, images: np.ndarray, config: ModelConfig,
                batch_size: int = READ_BATCH) -> list[Prediction]:
    """What `predict` reads from `images` with `model` (clean: no augmentation, no dropout)."""
    outputs = model.predict(images, batch_size=batch_size, verbose=0)
    return decode_outputs(outputs, config.head, config.charset, config.max_length if config.fixed_length else None)


def reading_scores(truths: list[str], readings: list[Prediction]) -> dict[str, float]:
    """full_match, char_accuracy (= recall) and precision of `readings` against `truths`, the
    compiled metrics' names and definitions (caocrvfy.metrics)."""
    records = [(t, p.text, p.confidence) for t, p in zip(truths, readings)]
    recall = scores.char_accuracy(records)
    return {"full_match": scores.full_match(records), "char_accuracy": recall,
            "precision": scores.char_precision(records), "recall": recall}


def predicted_scores(model: keras.Model, val: tuple[np.ndarray, np.ndarray], config: ModelConfig) -> dict[str, float]:
    """`reading_scores` of `model` on the (images, encoded labels) of `val`."""
    return reading_scores(truths_of(val[1], config), read_images(model, val[0], config))


def truths_of(labels: np.ndarray, config: ModelConfig) -> list[str]:
    return [decode_indices(row, config.charset) for row in labels]


def reads_differently(config: ModelConfig) -> bool:
    """Whether `predict` may read otherwise than the compiled metrics: a fixed-length CTC model."""
    return config.head == "ctc" and config.fixed_length


class PredictedValidation(keras.callbacks.Callback):
    """After each epoch, reads the validation images as `predict` does. For a fixed-length CTC
    model, its full-match, character accuracy, precision and recall replace the greedy
    `val_*` figures in the logs (for early stopping, the best model, history.csv), the greedy
    full-match kept as `val_greedy_full_match`; other heads' figures already agree. `readings()`
    gives this epoch's readings (read once, for `PseudoLabels` too). Put it before the callbacks
    that read the logs; `replace_logs=False` leaves them as they are."""

    def __init__(self, val: tuple[np.ndarray, np.ndarray], config: ModelConfig, replace_logs: bool = True):
        super().__init__()
        self.images, self.config = val[0], config
        self.replace_logs = replace_logs and reads_differently(config)
        self.truths = truths_of(val[1], config)
        self._read: list[Prediction] | None = None

    def readings(self) -> list[Prediction]:
        if self._read is None:
            self._read = read_images(self.model, self.images, self.config)
        return self._read

    def on_epoch_begin(self, epoch, logs=None):
        self._read = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.replace_logs:
            return
        figures = reading_scores(self.truths, self.readings())
        if "val_full_match" in logs:
            logs["val_greedy_full_match"] = logs["val_full_match"]
        logs.update({f"val_{name}": value for name, value in figures.items()})
