"""Losses for the sequence heads; the binary focal loss lives in `focal_loss.py`."""

from __future__ import annotations

import keras
from keras import ops

from caocrvfy.focal_loss import ALPHA, GAMMA, binary_focal_loss


def focal_ctc(y_true, y_pred, gamma=0.0, alpha=1.0):
    """Keras's CTC loss on softmax outputs, weighted as alpha (1 - e^-L)^gamma L.

    `y_true` holds 1-based class indices padded with 0 (the blank); `y_pred` holds
    probabilities with the blank at index 0. log(p) is passed as the logits: its log-softmax
    is itself, so the CTC loss is exact.
    """
    log_probs = ops.log(ops.clip(ops.cast(y_pred, "float32"), 1e-12, 1.0))
    # One blank-only row is appended and its loss dropped: TensorFlow's CTC fails on an empty
    # batch, which one worker of several gets when the last batch has fewer captchas than workers.
    y_true = ops.pad(y_true, [[0, 1], [0, 0]])
    log_probs = ops.pad(log_probs, [[0, 1], [0, 0], [0, 0]])
    loss = keras.losses.ctc(y_true, log_probs)[:-1]
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


# ---------------------------------------------------------------- per-position heads

LOSS_TERMS = ("focal", "ce", "dice", "tversky")


def parse_loss(spec: str, weights=None) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """'focal+dice' and '0.7,1.8' -> (('focal', 'dice'), (0.7, 1.8)); weights default to 1."""
    terms = tuple(t.strip() for t in spec.split("+") if t.strip())
    unknown = [t for t in terms if t not in LOSS_TERMS]
    if not terms or unknown:
        raise ValueError(f"loss {spec!r}: use terms from {', '.join(LOSS_TERMS)} joined by '+', "
                         "for example focal+dice")
    if isinstance(weights, str):
        weights = [float(w) for w in weights.split(",")]
    weights = tuple(float(w) for w in weights) if weights else (1.0,) * len(terms)
    if len(weights) != len(terms):
        raise ValueError(f"loss {spec!r} has {len(terms)} term(s) but {len(weights)} weight(s)")
    return terms, weights


TVERSKY_ALPHA, TVERSKY_BETA = 0.7, 0.3  # missed characters weigh more than spurious ones


def term_loss(term: str, head: str, gamma: float = GAMMA, alpha: float = ALPHA, label_smoothing: float = 0.0,
              tversky_alpha: float = TVERSKY_ALPHA, tversky_beta: float = TVERSKY_BETA):
    """One term as a function (y_true, y_pred) -> values per position (batch, positions) for
    `focal` and `ce`, per captcha (batch,) for `dice` and `tversky`."""
    if term == "focal" and head == "sigmoid":
        return lambda y, p: binary_focal_loss(y, p, gamma, alpha, label_smoothing=label_smoothing)
    if term == "focal":
        return lambda y, p: keras.losses.categorical_focal_crossentropy(y, p, alpha=alpha, gamma=gamma,
                                                                        label_smoothing=label_smoothing)
    if term == "ce" and head == "sigmoid":
        return lambda y, p: keras.losses.binary_crossentropy(y, p, label_smoothing=label_smoothing)
    if term == "ce":
        return lambda y, p: keras.losses.categorical_crossentropy(y, p, label_smoothing=label_smoothing)
    if term == "dice":
        return lambda y, p: keras.losses.dice(y, p, axis=(1, 2))
    if term == "tversky":
        return lambda y, p: keras.losses.tversky(y, p, tversky_alpha, tversky_beta, axis=(1, 2))
    raise ValueError(f"unknown loss term {term!r}")


@keras.saving.register_keras_serializable(package="caocrvfy")
class PositionLoss(keras.losses.Loss):
    """Weighted sum of loss terms for the per-position heads (sigmoid, softmax).

    Terms: `focal` (BinaryFocalLoss's function for sigmoid, categorical focal for softmax),
    `ce` (cross-entropy), `dice` (soft F1 over all of a captcha's outputs, Keras's dice) and
    `tversky` (Keras's tversky: `tversky_alpha` weighs missed characters, y (1 - p), and
    `tversky_beta` spurious ones). `class_weights` (one per character) scale the focal and ce
    terms at each position by the weight of its true character.
    """

    def __init__(self, head="softmax", terms=("focal",), weights=(1.0,), gamma=GAMMA, alpha=ALPHA,
                 label_smoothing=0.0, tversky_alpha=TVERSKY_ALPHA, tversky_beta=TVERSKY_BETA, class_weights=None,
                 name="position_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.head, self.terms, self.weights = head, tuple(terms), tuple(float(w) for w in weights)
        self.gamma, self.alpha, self.label_smoothing = gamma, alpha, label_smoothing
        self.tversky_alpha, self.tversky_beta = tversky_alpha, tversky_beta
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def term_values(self, y_true, y_pred) -> dict:
        """Each term's weighted value per captcha, (batch,), by term name."""
        y_true = ops.cast(y_true, y_pred.dtype)
        values = {}
        for term, weight in zip(self.terms, self.weights):
            value = term_loss(term, self.head, self.gamma, self.alpha, self.label_smoothing,
                              self.tversky_alpha, self.tversky_beta)(y_true, y_pred)
            if term in ("focal", "ce"):
                if self.class_weights is not None:
                    per_character = ops.convert_to_tensor(self.class_weights, value.dtype)
                    value = value * ops.sum(y_true * per_character, -1)
                value = ops.mean(value, -1)
            values[term] = weight * value
        return values

    def call(self, y_true, y_pred):
        return sum(self.term_values(y_true, y_pred).values())

    def get_config(self):
        config = super().get_config()
        config.update(head=self.head, terms=list(self.terms), weights=list(self.weights), gamma=self.gamma,
                      alpha=self.alpha, label_smoothing=self.label_smoothing, tversky_alpha=self.tversky_alpha,
                      tversky_beta=self.tversky_beta, class_weights=self.class_weights)
        return config


@keras.saving.register_keras_serializable(package="caocrvfy")
class TermMetric(keras.metrics.Mean):
    """The running mean of one term of a `PositionLoss`, named `<term>_term`; saved and loaded
    with the model (a checkpoint resumed with --resume keeps it)."""

    def __init__(self, term: str, loss: dict | PositionLoss, name=None, dtype=None):
        super().__init__(name=name or f"{term}_term", dtype=dtype)
        self.term = term
        self.loss = loss if isinstance(loss, PositionLoss) else PositionLoss.from_config(loss)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(self.loss.term_values(y_true, y_pred)[self.term], sample_weight)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "term": self.term, "loss": self.loss.get_config()}


def term_metrics(loss: PositionLoss) -> list:
    """One metric per term of a multi-term loss, so each epoch line can show what the loss is
    made of."""
    return [TermMetric(term, loss) for term in loss.terms] if len(loss.terms) > 1 else []
