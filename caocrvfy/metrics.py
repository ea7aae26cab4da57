"""String-level metrics that work in `fit` and `evaluate` for every head.

Every head's output is first decoded to rows of 1-based class indices padded with 0:
argmax per position for the sigmoid and softmax heads, greedy CTC (merge repeats, drop
blanks) for the CTC head. Characters are compared position by position.
"""

from __future__ import annotations

import keras
from keras import ops


def predicted_indices(y_pred, head: str):
    """Decoded predictions, (batch, steps) int32, left-aligned and padded with 0."""
    best = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    if head != "ctc":
        return best + 1
    steps = ops.shape(best)[1]
    previous = ops.pad(best[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    keep = ops.logical_and(ops.not_equal(best, previous), ops.not_equal(best, 0))
    slot = ops.where(keep, ops.cumsum(ops.cast(keep, "int32"), axis=1) - 1, -1)
    # Move each kept symbol to its slot: (batch, step, slot) one-hot times the symbol.
    placed = ops.one_hot(slot, steps, dtype="float32") * ops.cast(best, "float32")[:, :, None]
    return ops.cast(ops.sum(placed, axis=1), "int32")


def true_indices(y_true, head: str):
    if head == "ctc":
        return ops.cast(y_true, "int32")
    present = ops.sum(y_true, axis=-1) > 0
    return ops.where(present, ops.cast(ops.argmax(y_true, axis=-1), "int32") + 1, 0)


def _aligned(y_true, y_pred, head):
    truth, pred = true_indices(y_true, head), predicted_indices(y_pred, head)
    width = max(truth.shape[1], pred.shape[1])
    truth = ops.pad(truth, [[0, 0], [0, width - truth.shape[1]]])
    pred = ops.pad(pred, [[0, 0], [0, width - pred.shape[1]]])
    return truth, pred


@keras.saving.register_keras_serializable(package="caocrvfy")
class StringMetric(keras.metrics.Metric):
    """full_match: every character right; char_accuracy (= recall): share of true characters
    read right at their position; precision: share of predicted characters that are right."""

    KINDS = ("full_match", "char_accuracy", "precision", "recall")

    def __init__(self, kind="full_match", head="ctc", name=None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, not {kind!r}")
        self.kind, self.head = kind, head
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, pred = _aligned(y_true, y_pred, self.head)
        same = ops.equal(truth, pred)
        if self.kind == "full_match":
            hits = ops.all(same, axis=1)
            total = ops.ones_like(hits)
        else:
            counted = (pred > 0) if self.kind == "precision" else (truth > 0)
            hits = ops.logical_and(same, counted)
            total = counted
        self.hits.assign_add(ops.sum(ops.cast(hits, "float32")))
        self.total.assign_add(ops.sum(ops.cast(total, "float32")))

    def result(self):
        return ops.divide_no_nan(self.hits, self.total)

    def reset_state(self):
        self.hits.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "head": self.head}


def metrics_for(head: str) -> list:
    """The four reported metrics; the sigmoid head keeps the seed's binary precision/recall."""
    metrics = [StringMetric("full_match", head), StringMetric("char_accuracy", head)]
    if head == "sigmoid":
        return metrics + [keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")]
    return metrics + [StringMetric("precision", head), StringMetric("recall", head)]
