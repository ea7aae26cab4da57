"""Binary focal loss, FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t) (Lin et al., 2017)."""

from __future__ import annotations

import keras
from keras import ops


GAMMA, ALPHA = 2.0, 0.25  # Lin et al.'s defaults, and the seed's


def binary_focal_loss(y_true, y_pred, gamma=GAMMA, alpha=ALPHA, from_logits=False, label_smoothing=0.0):
    """Element-wise focal loss averaged over the last axis.

    alpha weighs positives and (1 - alpha) negatives, as Keras's
    `BinaryFocalCrossentropy(apply_class_balancing=True)`. Log-probabilities come from
    `log_sigmoid` for logits and from clipped probabilities otherwise, so p = 0 and p = 1
    give finite values and gradients.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        log_p, log_not_p = ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
        p = ops.sigmoid(y_pred)
    else:
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        log_p, log_not_p = ops.log(p), ops.log(1.0 - p)
    cross_entropy = -(y_true * log_p + (1.0 - y_true) * log_not_p)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    # max(., eps): the slope of x^gamma is infinite at 0 for gamma < 1, and inf * 0 is NaN.
    modulator = ops.power(ops.maximum(1.0 - p_t, keras.config.epsilon()), gamma)
    return ops.mean(alpha_t * modulator * cross_entropy, axis=-1)


@keras.saving.register_keras_serializable(package="caocrvfy")
class BinaryFocalLoss(keras.losses.Loss):
    """Focal loss for sigmoid outputs: easy, confident outputs count less than hard ones."""

    def __init__(self, gamma=GAMMA, alpha=ALPHA, from_logits=False, label_smoothing=0.0,
                 name="binary_focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma = gamma
        self.alpha = alpha
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        return binary_focal_loss(y_true, y_pred, self.gamma, self.alpha, self.from_logits, self.label_smoothing)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, alpha=self.alpha, from_logits=self.from_logits,
                      label_smoothing=self.label_smoothing)
        return config
