import math

import keras
import numpy as np
import pytest

from caocrvfy.losses import FocalCTCLoss


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def ctc_batch():
    """5 samples, 10 steps, blank + 5 classes; labels of lengths 3, 1, 4, 2, 2 padded with 0.

    Each output leans towards one alignment of its label, more or less strongly, so the
    losses range from well below 1 (where focal weighting matters) to several nats.
    """
    rng = np.random.default_rng(0)
    y_true = np.array([[1, 2, 2, 0], [5, 0, 0, 0], [3, 1, 4, 1], [2, 3, 0, 0], [4, 4, 0, 0]], np.int32)
    paths = [[1, 1, 0, 2, 0, 2, 2, 0, 0, 0], [0, 0, 5, 5, 5, 0, 0, 0, 0, 0], [3, 0, 1, 1, 0, 4, 0, 1, 0, 0],
             [0, 2, 2, 0, 0, 3, 3, 0, 0, 0], [4, 4, 4, 0, 4, 0, 0, 0, 0, 0]]
    strength = np.array([6.0, 4.0, 2.0, 1.0, 0.0])[:, None, None]
    logits = rng.normal(0, 1, size=(5, 10, 6)) + strength * np.eye(6)[paths]
    return y_true, softmax(logits)


def test_plain_ctc_on_a_hand_computed_case():
    # Two steps, label 'a' (class 1): paths "a a", "- a", "a -" all collapse to 'a'.
    y_pred = np.array([[[0.6, 0.4], [0.3, 0.7]]], np.float32)
    y_true = np.array([[1]], np.int32)
    expected = -math.log(0.4 * 0.7 + 0.6 * 0.7 + 0.4 * 0.3)
    assert float(FocalCTCLoss()(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)


def test_gamma_zero_equals_keras_ctc_on_log_probabilities(ctc_batch):
    y_true, y_pred = ctc_batch
    expected = np.asarray(keras.losses.ctc(y_true, np.log(y_pred)))
    ours = np.asarray(FocalCTCLoss(gamma=0.0, reduction=None)(y_true, y_pred))
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    assert float(FocalCTCLoss()(y_true, y_pred)) == pytest.approx(expected.mean(), rel=1e-5)


@pytest.mark.parametrize("gamma,alpha", [(2.0, 1.0), (1.0, 0.25), (0.5, 2.0)])
def test_focal_weighting_formula(ctc_batch, gamma, alpha):
    y_true, y_pred = ctc_batch
    plain = np.asarray(keras.losses.ctc(y_true, np.log(y_pred)), np.float64)
    assert plain.min() < 0.5 and plain.max() > 3  # both ends of the focal weighting
    expected = alpha * (1 - np.exp(-plain)) ** gamma * plain
    ours = np.asarray(FocalCTCLoss(gamma=gamma, alpha=alpha, reduction=None)(y_true, y_pred))
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    assert np.all(ours <= alpha * plain + 1e-6)  # focal weighting only ever shrinks the loss


def test_zero_probabilities_give_a_finite_loss():
    y_pred = np.zeros((1, 5, 3), np.float32)
    y_pred[0, :, 0] = 1.0  # only blanks have any probability
    loss = FocalCTCLoss(gamma=2.0)(np.array([[1, 2]], np.int32), y_pred)
    assert np.isfinite(float(loss)) and float(loss) > 0


def test_config_round_trip():
    loss = FocalCTCLoss(gamma=2.5, alpha=0.5, reduction="sum", name="ctc_focal")
    config = loss.get_config()
    assert {k: config[k] for k in ("gamma", "alpha", "reduction", "name")} == {
        "gamma": 2.5, "alpha": 0.5, "reduction": "sum", "name": "ctc_focal"}
    for copy in (FocalCTCLoss.from_config(config),
                 keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))):
        assert type(copy) is FocalCTCLoss
        assert copy.get_config() == config
    assert keras.saving.get_registered_name(FocalCTCLoss) == "caocrvfy>FocalCTCLoss"
