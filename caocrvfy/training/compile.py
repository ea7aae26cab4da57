"""The optimizer, loss and metrics a reader trains with."""

from __future__ import annotations

import keras

from caocrvfy.focal_loss import ALPHA, GAMMA, BinaryFocalLoss
from caocrvfy.losses import TVERSKY_ALPHA, TVERSKY_BETA, FocalCTCLoss, PositionLoss, parse_loss, term_metrics
from caocrvfy.metrics import metrics_for
from caocrvfy.model_enhanced import allow_jit_on_jax, model_head

DEFAULT_LEARNING_RATE = 0.0012  # the seed's initial rate


def make_loss(head: str, loss: str = "focal", loss_weights=None, focal_gamma: float = GAMMA,
              focal_alpha: float = ALPHA, label_smoothing: float = 0.0, class_weights=None,
              tversky_alpha: float = TVERSKY_ALPHA, tversky_beta: float = TVERSKY_BETA) -> keras.losses.Loss:
    """The head's loss. `loss` names terms joined by '+' (focal, ce, dice, tversky) with
    `loss_weights`. One plain term gives the product's own classes (BinaryFocalLoss, Keras's
    categorical focal, FocalCTCLoss); sums, Dice/Tversky and class weights give a `PositionLoss`."""
    terms, weights = parse_loss(loss, loss_weights)
    if head == "ctc":
        if len(terms) > 1 or terms[0] not in ("focal", "ce") or class_weights is not None:
            raise ValueError(f"the CTC head takes the loss 'focal' or 'ce', not {loss!r} or class weights: "
                             "Dice, Tversky and class weights need per-position outputs (--head softmax or sigmoid)")
        return FocalCTCLoss(gamma=focal_gamma if terms[0] == "focal" else 0.0, alpha=weights[0])
    if len(terms) == 1 and weights == (1.0,) and class_weights is None and terms[0] in ("focal", "ce"):
        if head == "softmax" and terms[0] == "focal":
            return keras.losses.CategoricalFocalCrossentropy(alpha=focal_alpha, gamma=focal_gamma,
                                                             label_smoothing=label_smoothing)
        if head == "softmax":
            return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        if terms[0] == "focal":
            return BinaryFocalLoss(gamma=focal_gamma, alpha=focal_alpha, label_smoothing=label_smoothing)
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    return PositionLoss(head, terms, weights, focal_gamma, focal_alpha, label_smoothing, tversky_alpha,
                        tversky_beta, class_weights)


def compile_model(model: keras.Model, learning_rate: float | None = None, jit_compile: bool | str = "auto",
                  steps_per_execution: int = 1, **loss_options) -> keras.Model:
    """Adam (initial rate DEFAULT_LEARNING_RATE) and the head's loss (`make_loss`'s keywords in `loss_options`:
    BinaryFocalLoss for sigmoid, categorical focal for softmax, focal-weighted CTC for ctc by
    default); a loss of several terms adds one `<term>_term` metric per term."""
    head = model_head(model)
    allow_jit_on_jax(model)
    loss = make_loss(head, **loss_options)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate or DEFAULT_LEARNING_RATE),
        loss=loss,
        metrics=metrics_for(head) + (term_metrics(loss) if isinstance(loss, PositionLoss) else []),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model
