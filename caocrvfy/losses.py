"""Losses for the sequence heads; the binary focal loss lives in `focal_loss.py`."""

from __future__ import annotations

import keras
from keras import ops


def focal_ctc(y_true, y_pred, gamma=0.0, alpha=1.0):
    """Keras's CTC loss on softmax outputs, weighted as alpha (1 - e^-L)^gamma L.

    `y_true` holds 1-based class indices padded with 0 (the blank); `y_pred` holds
    probabilities with the blank at index 0. log(p) is passed as the logits: its log-softmax
    is itself, so the CTC loss is exact.
    """
    log_probs = ops.log(ops.clip(ops.cast(y_pred, "float32"), 1e-12, 1.0))
    loss = keras.losses.ctc(y_true, log_probs)
    if gamma:
        loss = ops.power(1.0 - ops.exp(-loss), gamma) * loss
    return alpha * loss


@keras.saving.register_keras_serializable(package="caocrvfy")
class FocalCTCLoss(keras.losses.Loss):
    """CTC loss, optionally focal-weighted; gamma = 0 and alpha = 1 give plain CTC."""

    def __init__(self, gamma=0.0, alpha=1.0, name="focal_ctc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma = gamma
        self.alpha = alpha

    def call(self, y_true, y_pred):
        return focal_ctc(y_true, y_pred, self.gamma, self.alpha)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, alpha=self.alpha)
        return config
