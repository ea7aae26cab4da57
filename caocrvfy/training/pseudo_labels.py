"""`--unlabelled`: training on the model's own confident readings of unlabelled images.

Self-training, refreshed as the model improves: after an epoch the model reads the unlabelled
images (clean, as at prediction time) and every reading above a confidence threshold joins
the training batches with that reading as its label, where the model's augmentation layers
then show it distorted (the weak/strong split of FixMatch: read clean, learn distorted). The
threshold is calibrated on the human-labelled validation images each time: just above the
most confident wrong reading there, and never below `MIN_CONFIDENCE`. Validation and early
stopping see human labels only.

The readings' share of each batch grows in step with the budget spent (the time limit, else
the epochs), from none to its full share at `RAMP_SHARE` of it: read by the starting model, the
unlabelled images can teach its mistakes back to it, and the labelled images, nearly all of each
batch early on, correct them first. At their full share from the first epoch, 200 labelled
arithmetic captchas with 2,000 unlabelled ones, from the base, read a `7` as `1` 244 times in
2,000 test images (82.75% of answers), and 100 labels of swust-cas-2019 locked `n` read as `h`
in (90.04% of the test files). Training on the labelled images alone for a fixed share of the
budget first (`--labelled-first 0.3`) fixed both but unlearned what the start model read right
and the labels held once: from 25 labels of captcha-images-v2 (one `m` among the training
images), 77.88% of the test files. The ramp: 90.20%, 99.62% and 98.56% of these three
(docs/notes/2026-12-07-ramp.md). `--labelled-first SHARE` still waits that share before any.
"""

from __future__ import annotations

import logging
import threading
import time

import keras
import numpy as np

from caocrvfy.data.charset import encode_labels
from caocrvfy.model_config import ModelConfig
from caocrvfy.training.config import RAMP_SHARE
from caocrvfy.training.validation import PredictedValidation, read_images

log = logging.getLogger(__name__)

MIN_CONFIDENCE = 0.8  # no reading below this is trained on, whatever the validation images say
LABELLED_SHARE = 0.25  # of each batch at least, however many pseudo-labels there are
REFRESH_SHARE = 0.25  # the readings may take at most this share of the training time


def threshold(confidences: np.ndarray, correct: np.ndarray, floor: float = MIN_CONFIDENCE) -> float:
    """The confidence a reading needs to be trained on: above every wrong validation reading."""
    wrong = np.asarray(confidences)[~np.asarray(correct, bool)]
    return float(max(floor, np.nextafter(wrong.max(), 1.0) if len(wrong) else floor))


class LabelPool:
    """The training batches' source: the labelled images and the current pseudo-labelled ones.
    `sample(rng, n)` is what `StreamBatches` calls; `set_pseudo` replaces the pseudo-labels;
    `weight` (0 to 1) scales their share of each batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.pseudo_images = images[:0]
        self.pseudo_labels = labels[:0]
        self.weight = 1.0
        self._lock = threading.Lock()

    def set_pseudo(self, images: np.ndarray, labels: np.ndarray) -> None:
        with self._lock:
            self.pseudo_images, self.pseudo_labels = images, labels

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            pseudo = len(self.pseudo_images)
            full = max(LABELLED_SHARE, len(self.images) / (len(self.images) + pseudo)) if pseudo else 1.0
            share = 1.0 - (1.0 - full) * self.weight
            labelled = int(rng.binomial(n, share))
            a = rng.integers(0, len(self.images), size=labelled)
            b = rng.integers(0, max(pseudo, 1), size=n - labelled)
            if not pseudo:
                return self.images[a], self.labels[a]
            return (np.concatenate([self.images[a], self.pseudo_images[b]]),
                    np.concatenate([self.labels[a], self.pseudo_labels[b]]))


class PseudoLabels(keras.callbacks.Callback):
    """Refreshes the pool's pseudo-labels after an epoch, when the last refresh took at most
    `REFRESH_SHARE` of the time since, once `labelled_first` of the budget is spent, and sets
    the pool's `weight` to the share of `RAMP_SHARE` of the budget spent: of `minutes` of
    training (`already` of them before a --resume) when given, else of `epochs`. Logs
    `pseudo_labels`, `pseudo_threshold` and `pseudo_weight`. `validation` reads the validation
    images: put it among fit's callbacks, before this one."""

    def __init__(self, pool: LabelPool, unlabelled: np.ndarray, validation: PredictedValidation,
                 config: ModelConfig, labelled_first: float = 0.0, minutes: float | None = None,
                 epochs: int | None = None, already: float = 0.0):
        super().__init__()
        self.pool, self.unlabelled, self.validation, self.config = pool, unlabelled, validation, config
        self.labelled_first, self.seconds, self.epochs = labelled_first, minutes * 60 if minutes else None, epochs
        self.already = already
        self._since, self._last_cost = time.monotonic(), 0.0  # the end of the last refresh, and its cost
        self.count, self.level = 0, 1.0
        self.readings, self.kept = [], np.zeros(0, bool)  # the last refresh's readings, and which were trained on

    def on_train_begin(self, logs=None):
        self.start = time.monotonic() - self.already
        self.pool.weight = self.ramp(-1)
        if self.waiting(-1):
            log.info(f"pseudo-labels: the labelled images alone until {self.labelled_first:.0%} of the budget")

    def spent(self, epoch: int) -> float:
        """The share of the budget spent after `epoch` (from 0; -1: before the first)."""
        if self.seconds is not None:
            return (time.monotonic() - self.start) / self.seconds
        return (epoch + 1) / self.epochs if self.epochs else 1.0

    def waiting(self, epoch: int) -> bool:
        """Whether the labelled images alone are still being trained on after `epoch` (from 0)."""
        return self.spent(epoch) < self.labelled_first

    def ramp(self, epoch: int) -> float:
        """The readings' weight in each batch after `epoch`: the share of `RAMP_SHARE` spent."""
        return min(1.0, self.spent(epoch) / RAMP_SHARE)

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.pool.weight = self.ramp(epoch)
        if not self.waiting(epoch) and self._last_cost <= REFRESH_SHARE * (now - self._since):
            read = self.validation.readings()
            correct = np.array([p.text == truth for p, truth in zip(read, self.validation.truths)])
            self.level = threshold(np.array([p.confidence for p in read]), correct)
            readings = read_images(self.model, self.unlabelled, self.config)
            longest = self.config.max_length  # a longer reading is wrong and has no room in the labels
            keep = np.array([p.confidence >= self.level and 0 < len(p.text) <= longest for p in readings])
            self.readings, self.kept = readings, keep
            texts = [p.text for p, k in zip(readings, keep) if k]
            self.pool.set_pseudo(self.unlabelled[keep], encode_labels(texts, self.config.charset, longest))
            self.count = int(keep.sum())
            log.info(f"pseudo-labels: {self.count} of {len(self.unlabelled)} unlabelled images read with confidence "
                     f"at least {self.level:.3f} (validation: {int(correct.sum())}/{len(correct)} right)")
            self._since = time.monotonic()
            self._last_cost = self._since - now
        if logs is not None:
            logs["pseudo_labels"] = self.count
            logs["pseudo_threshold"] = self.level
            logs["pseudo_weight"] = self.pool.weight
