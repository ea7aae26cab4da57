import math

import keras
import numpy as np
import pytest

from caocrvfy.losses import FocalCTCLoss, focal_ctc


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


def test_an_empty_batch_gives_no_losses_and_leaves_the_others_unchanged(ctc_batch):
    # One worker of several gets an empty batch when the last one holds fewer captchas than workers.
    y_true, y_pred = ctc_batch
    empty = focal_ctc(y_true[:0], y_pred[:0], gamma=2.0)
    assert tuple(empty.shape) == (0,)
    whole = keras.ops.convert_to_numpy(focal_ctc(y_true, y_pred, gamma=2.0))
    first = keras.ops.convert_to_numpy(focal_ctc(y_true[:1], y_pred[:1], gamma=2.0))
    np.testing.assert_allclose(first, whole[:1], rtol=1e-5)


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


# ---------------------------------------------------------------- per-position terms

from caocrvfy.focal_loss import BinaryFocalLoss  # noqa: E402
from caocrvfy.losses import PositionLoss, parse_loss  # noqa: E402
from caocrvfy.training.compile import make_loss  # noqa: E402


@pytest.fixture
def position_batch():
    """2 captchas, 2 positions, 3 characters: one-hot truth and softmax-like outputs."""
    y_true = np.eye(3, dtype=np.float32)[[[0, 1], [2, 2]]]
    y_pred = np.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], [[0.3, 0.3, 0.4], [0.5, 0.25, 0.25]]], np.float32)
    return y_true, y_pred


def test_parse_loss():
    assert parse_loss("focal") == (("focal",), (1.0,))
    assert parse_loss("focal+dice", "0.7,1.8") == (("focal", "dice"), (0.7, 1.8))
    with pytest.raises(ValueError, match="terms from"):
        parse_loss("focal+hinge")
    with pytest.raises(ValueError, match="2 term"):
        parse_loss("focal+dice", "1")


def test_single_focal_term_matches_the_products_losses(position_batch):
    y_true, y_pred = position_batch
    for head, reference in [("sigmoid", BinaryFocalLoss(gamma=2.0, alpha=0.25)),
                            ("softmax", keras.losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0))]:
        ours = PositionLoss(head, ("focal",), (1.0,), gamma=2.0, alpha=0.25)
        np.testing.assert_allclose(float(ours(y_true, y_pred)), float(reference(y_true, y_pred)), rtol=1e-5)


def test_dice_term_by_hand(position_batch):
    y_true, y_pred = position_batch
    # Per captcha: 1 - 2 sum(y p) / (sum y + sum p); every row of p sums to 1, so sum p = 2.
    expected = [1 - 2 * (0.7 + 0.8) / (2 + 2), 1 - 2 * (0.4 + 0.25) / (2 + 2)]
    values = PositionLoss("softmax", ("dice",), (1.0,)).term_values(y_true, y_pred)["dice"]
    np.testing.assert_allclose(np.asarray(values), expected, rtol=1e-5)


def test_tversky_weighs_missed_characters_by_alpha(position_batch):
    y_true, y_pred = position_batch
    tp = np.array([0.7 + 0.8, 0.4 + 0.25])
    missed = np.array([0.3 + 0.2, 0.6 + 0.75])  # sum of y (1 - p)
    spurious = 2 - tp  # sum of (1 - y) p
    expected = 1 - tp / (tp + 0.9 * missed + 0.1 * spurious)
    loss = PositionLoss("softmax", ("tversky",), (1.0,), tversky_alpha=0.9, tversky_beta=0.1)
    np.testing.assert_allclose(np.asarray(loss.term_values(y_true, y_pred)["tversky"]), expected, rtol=1e-4)


def test_weighted_sum_and_class_weights(position_batch):
    y_true, y_pred = position_batch
    ce = -np.log([[0.7, 0.8], [0.4, 0.25]])  # per position
    both = PositionLoss("softmax", ("ce", "dice"), (0.7, 1.8))
    values = both.term_values(y_true, y_pred)
    np.testing.assert_allclose(np.asarray(values["ce"]), 0.7 * ce.mean(1), rtol=1e-5)
    np.testing.assert_allclose(float(both(y_true, y_pred)), float(np.mean(values["ce"] + values["dice"])), rtol=1e-5)
    weighted = PositionLoss("softmax", ("ce",), (1.0,), class_weights=[1.0, 1.0, 2.0])
    expected = (ce * [[1, 1], [2, 2]]).mean(1)  # the second captcha is all character 2
    np.testing.assert_allclose(np.asarray(weighted.term_values(y_true, y_pred)["ce"]), expected, rtol=1e-5)


def test_position_loss_config_round_trip():
    loss = PositionLoss("sigmoid", ("focal", "tversky"), (0.5, 2.0), gamma=1.0, class_weights=[1.0, 2.0])
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (again.head, again.terms, again.weights, again.gamma, again.class_weights) == \
        ("sigmoid", ("focal", "tversky"), (0.5, 2.0), 1.0, [1.0, 2.0])


def test_ctc_head_refuses_dice():
    with pytest.raises(ValueError, match="per-position"):
        make_loss("ctc", loss="focal+dice")
    assert isinstance(make_loss("ctc", loss="ce"), FocalCTCLoss)
    assert isinstance(make_loss("sigmoid"), BinaryFocalLoss)
    assert isinstance(make_loss("softmax", loss="focal+dice"), PositionLoss)
