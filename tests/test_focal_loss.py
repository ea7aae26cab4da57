import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from caocrvfy.focal_loss import BinaryFocalLoss, binary_focal_loss

Y_TRUE = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
Y_PRED = np.array([[0.9, 0.2], [0.3, 0.6]], np.float32)


def by_hand(y: float, p: float, gamma: float, alpha: float) -> float:
    """-alpha_t (1 - p_t)^gamma log(p_t) for one element."""
    p_t = p if y == 1 else 1 - p
    alpha_t = alpha if y == 1 else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


def test_matches_hand_computed_values_on_2x2():
    rows = [
        [by_hand(1, 0.9, 2, 0.25), by_hand(0, 0.2, 2, 0.25)],  # 0.25*0.01*-ln0.9, 0.75*0.04*-ln0.8
        [by_hand(0, 0.3, 2, 0.25), by_hand(1, 0.6, 2, 0.25)],  # 0.75*0.09*-ln0.7, 0.25*0.16*-ln0.6
    ]
    per_row = [sum(r) / 2 for r in rows]

    none = BinaryFocalLoss(gamma=2.0, alpha=0.25, reduction=None)(Y_TRUE, Y_PRED)
    mean = BinaryFocalLoss(gamma=2.0, alpha=0.25)(Y_TRUE, Y_PRED)

    np.testing.assert_allclose(none, per_row, rtol=1e-5)
    np.testing.assert_allclose(none, [0.00347885, 0.02225429], rtol=1e-5)
    assert float(mean) == pytest.approx(0.01286657, rel=1e-5)


def test_alpha_weighs_positives_and_one_minus_alpha_negatives():
    y_true = np.array([[1.0, 0.0]], np.float32)
    y_pred = np.array([[0.5, 0.5]], np.float32)
    # Same p_t = 0.5 for both elements: only alpha_t differs (0.9 vs 0.1).
    per_element = binary_focal_loss(y_true[..., None], y_pred[..., None], gamma=2.0, alpha=0.9)
    positive, negative = np.asarray(per_element)[0]
    assert positive / negative == pytest.approx(9.0, rel=1e-5)
    assert positive == pytest.approx(0.9 * 0.25 * math.log(2), rel=1e-5)


def test_sample_weight_and_sum_reduction():
    weights = np.array([2.0, 0.0], np.float32)
    rows = np.asarray(BinaryFocalLoss(reduction=None)(Y_TRUE, Y_PRED))
    total = BinaryFocalLoss(reduction="sum")(Y_TRUE, Y_PRED, sample_weight=weights)
    assert float(total) == pytest.approx(2.0 * rows[0], rel=1e-5)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.0), (0.1, 3.5)])
def test_matches_keras_class_balanced_focal_crossentropy(alpha, gamma, from_logits):
    rng = np.random.default_rng(int(alpha * 100 + gamma * 10))
    y_true = rng.integers(0, 2, size=(8, 5, 7)).astype(np.float32)
    if from_logits:
        y_pred = rng.normal(0.0, 3.0, size=y_true.shape).astype(np.float32)
    else:
        y_pred = rng.uniform(0.02, 0.98, size=y_true.shape).astype(np.float32)
    ours = BinaryFocalLoss(gamma=gamma, alpha=alpha, from_logits=from_logits, reduction=None)
    theirs = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=alpha, gamma=gamma, from_logits=from_logits, reduction=None
    )
    np.testing.assert_allclose(ours(y_true, y_pred), theirs(y_true, y_pred), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
def test_label_smoothing_matches_keras(label_smoothing, from_logits):
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 2, size=(6, 9)).astype(np.float32)
    y_pred = (rng.normal(0, 2, size=y_true.shape) if from_logits else rng.uniform(0.05, 0.95, y_true.shape))
    y_pred = y_pred.astype(np.float32)
    kwargs = dict(alpha=0.4, gamma=2.0, from_logits=from_logits, label_smoothing=label_smoothing)
    ours = BinaryFocalLoss(**kwargs)(y_true, y_pred)
    theirs = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, **kwargs)(y_true, y_pred)
    unsmoothed = BinaryFocalLoss(**{**kwargs, "label_smoothing": 0.0})(y_true, y_pred)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    assert abs(float(ours) - float(unsmoothed)) > 1e-3  # smoothing does something


def test_gamma_zero_is_alpha_weighted_binary_crossentropy():
    alpha = 0.3
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, size=(4, 6)).astype(np.float32)
    y_pred = rng.uniform(0.01, 0.99, size=(4, 6)).astype(np.float32)
    bce = -(y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred))
    weighted = np.where(y_true == 1, alpha, 1 - alpha) * bce
    ours = BinaryFocalLoss(gamma=0.0, alpha=alpha, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(ours, weighted.mean(-1), rtol=1e-5)


def test_saturated_logits_are_not_clipped():
    # A confidently wrong logit costs alpha * |logit| exactly (log_sigmoid, no probability clip).
    loss = BinaryFocalLoss(alpha=0.25, gamma=2.0, from_logits=True, reduction=None)
    assert float(loss(np.array([[1.0]]), np.array([[-100.0]]))[0]) == pytest.approx(25.0, rel=1e-6)
    assert float(loss(np.array([[0.0]]), np.array([[100.0]]))[0]) == pytest.approx(75.0, rel=1e-6)


def _loss_and_gradient(loss, y_true, y_pred):
    y_pred = tf.Variable(np.asarray(y_pred, np.float32))
    with tf.GradientTape() as tape:
        value = loss(tf.constant(y_true, tf.float32), y_pred)
    return value.numpy(), tape.gradient(value, y_pred).numpy()


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5, 0.0])
def test_finite_value_and_gradient_for_large_logits(gamma):
    y_true = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    logits = np.array([[100.0, -100.0, -100.0, 100.0], [30.0, -30.0, 0.0, 1e4]])
    value, grad = _loss_and_gradient(BinaryFocalLoss(gamma=gamma, from_logits=True), y_true, logits)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    assert grad[1, 2] < 0  # an unsure positive is pushed up


@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0])
def test_finite_value_and_gradient_at_probability_zero_and_one(gamma):
    y_true = np.array([[1.0, 0.0], [0.0, 1.0]])
    y_pred = np.array([[1.0, 0.0], [1.0, 0.0]])  # right, right, wrong, wrong
    value, grad = _loss_and_gradient(BinaryFocalLoss(gamma=gamma), y_true, y_pred)
    assert np.isfinite(value) and value > 0
    assert np.all(np.isfinite(grad))


def test_config_round_trip():
    loss = BinaryFocalLoss(gamma=3.0, alpha=0.1, from_logits=True, label_smoothing=0.05,
                           reduction="sum", name="focal")
    config = loss.get_config()
    assert {k: config[k] for k in ("gamma", "alpha", "from_logits", "label_smoothing", "reduction", "name")} == {
        "gamma": 3.0, "alpha": 0.1, "from_logits": True, "label_smoothing": 0.05, "reduction": "sum", "name": "focal"}

    for copy in (BinaryFocalLoss.from_config(config),
                 keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))):
        assert type(copy) is BinaryFocalLoss
        assert copy.get_config() == config
        assert float(copy(Y_TRUE, Y_PRED)) == pytest.approx(float(loss(Y_TRUE, Y_PRED)), rel=1e-6)


def test_registered_under_package_name():
    assert keras.saving.get_registered_name(BinaryFocalLoss) == "caocrvfy>BinaryFocalLoss"
    assert keras.saving.get_registered_object("caocrvfy>BinaryFocalLoss") is BinaryFocalLoss
