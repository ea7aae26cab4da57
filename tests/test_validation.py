"""Validation figures in fit read as `predict` reads (caocrvfy.training.validation)."""

import numpy as np
import pytest

from caocrvfy.model_config import ModelConfig
from caocrvfy.training.validation import PredictedValidation, reading_scores

CHARSET = "0123"


def short_greedy_output() -> np.ndarray:
    """One image's CTC output whose greedy reading is "1", and whose best 2-character path is
    "12": the '2' at the second step is the runner-up to a blank."""
    out = np.full((3, 5), 1e-4, np.float32)
    out[0, 2] = 0.9  # '1' (class 2: blank 0, then '0' '1' '2' '3')
    out[1, 0], out[1, 3] = 0.6, 0.4  # blank, then '2'
    out[2, 0] = 0.9
    return out / out.sum(-1, keepdims=True)


class Reads:
    """A stand-in model: `outputs` for every image."""

    def __init__(self, outputs):
        self.outputs = outputs

    def predict(self, images, batch_size, verbose):
        return np.stack([self.outputs for _ in images])


def callback_for(fixed_length: bool) -> PredictedValidation:
    config = ModelConfig(charset=CHARSET, max_length=2, fixed_length=fixed_length, height=8, width=32)
    labels = np.array([[2, 3]] * 4, np.int32)  # "12"
    callback = PredictedValidation((np.zeros((4, 8, 32, 1), np.uint8), labels), config)
    callback.set_model(Reads(short_greedy_output()))
    return callback


def test_a_fixed_length_model_is_scored_with_the_reading_predict_gives():
    callback = callback_for(fixed_length=True)
    logs = {"val_full_match": 0.0, "val_char_accuracy": 0.5, "val_precision": 1.0, "val_recall": 0.5}
    callback.on_epoch_begin(0)
    callback.on_epoch_end(0, logs)
    assert logs["val_full_match"] == 1.0 and logs["val_greedy_full_match"] == 0.0
    assert logs["val_char_accuracy"] == logs["val_recall"] == logs["val_precision"] == 1.0
    assert [p.text for p in callback.readings()] == ["12"] * 4


def test_a_model_of_free_length_keeps_the_compiled_figures():
    callback = callback_for(fixed_length=False)
    logs = {"val_full_match": 0.0}
    callback.on_epoch_end(0, logs)
    assert logs == {"val_full_match": 0.0}
    assert [p.text for p in callback.readings()] == ["1"] * 4  # predict's reading has no length to keep


def test_readings_are_read_again_after_each_epoch():
    callback = callback_for(fixed_length=True)
    callback.on_epoch_begin(0)
    first = callback.readings()
    assert callback.readings() is first  # once per epoch, for PseudoLabels too
    callback.on_epoch_begin(1)
    assert callback.readings() is not first


@pytest.mark.parametrize("truth, read, figures", [
    ("12", "12", (1.0, 1.0, 1.0)),
    ("12", "1", (0.0, 0.5, 1.0)),  # one of two true characters, the one read right
    ("12", "132", (0.0, 0.5, 1 / 3)),
])
def test_reading_scores_count_characters_by_position(truth, read, figures):
    from caocrvfy.inference.decoding import Prediction

    got = reading_scores([truth], [Prediction(read, 1.0)])
    assert (got["full_match"], got["recall"], got["precision"]) == pytest.approx(figures)
    assert got["char_accuracy"] == got["recall"]
