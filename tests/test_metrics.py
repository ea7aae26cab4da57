"""StringMetric on hand-made outputs. Character set 'ABC': class 1 = A, 2 = B, 3 = C, 0 = blank."""

import keras
import numpy as np
import pytest

from caocrvfy.metrics import StringMetric, metrics_for, predicted_indices

BLANK, A, B, C = 0, 1, 2, 3


def ctc_output(*paths: list[int]) -> np.ndarray:
    """Softmax-like outputs whose argmax at each step follows `path` (blank + 3 classes)."""
    out = np.full((len(paths), len(paths[0]), 4), 0.1, np.float32)
    for row, path in enumerate(paths):
        out[row, np.arange(len(path)), path] = 0.7
    return out


def scores(y_true, y_pred, head: str) -> dict[str, float]:
    results = {}
    for kind in StringMetric.KINDS:
        metric = StringMetric(kind, head)
        metric.update_state(np.asarray(y_true), np.asarray(y_pred))
        results[kind] = float(metric.result())
    return results


def test_ctc_greedy_decoding_merges_repeats_and_drops_blanks():
    paths = ctc_output(
        [A, A, B, BLANK, B, B],        # blank between the doubled letter: "ABB"
        [A, A, BLANK, A, BLANK, BLANK],  # "AA"
        [BLANK, C, C, C, BLANK, A],    # "CA"
        [B, B, B, B, B, B],            # "B"
    )
    np.testing.assert_array_equal(
        predicted_indices(paths, "ctc"),
        [[A, B, B, 0, 0, 0], [A, A, 0, 0, 0, 0], [C, A, 0, 0, 0, 0], [B, 0, 0, 0, 0, 0]],
    )


def test_ctc_double_letters_read_right():
    y_true = [[A, B, B], [A, A, 0]]
    y_pred = ctc_output([A, A, B, BLANK, B, B], [A, A, BLANK, A, BLANK, BLANK])
    assert scores(y_true, y_pred, "ctc") == {"full_match": 1.0, "char_accuracy": 1.0, "precision": 1.0, "recall": 1.0}


def test_ctc_double_letter_without_blank_collapses():
    y_true = [[A, B, B]]
    y_pred = ctc_output([A, A, B, B, B, BLANK])  # reads "AB"
    assert scores(y_true, y_pred, "ctc") == pytest.approx(
        {"full_match": 0.0, "char_accuracy": 2 / 3, "precision": 1.0, "recall": 2 / 3})


def test_ctc_extra_characters_lower_precision_not_recall():
    y_true = [[A, B, 0]]
    y_pred = ctc_output([A, BLANK, B, BLANK, C, BLANK])  # reads "ABC"
    result = scores(y_true, y_pred, "ctc")
    assert result == pytest.approx({"full_match": 0.0, "char_accuracy": 1.0, "precision": 2 / 3, "recall": 1.0})
    assert result["precision"] != result["recall"]


def test_ctc_variable_length_labels_padded_with_zero():
    y_true = [[A, B, C, A], [C, 0, 0, 0], [B, A, 0, 0]]
    y_pred = ctc_output(
        [A, B, C, BLANK, A, A],
        [BLANK, C, C, BLANK, BLANK, BLANK],
        [B, BLANK, C, BLANK, BLANK, BLANK],  # "BC": second character wrong
    )
    # 7 true characters, 6 right at their position; 7 predicted, 6 right.
    assert scores(y_true, y_pred, "ctc") == pytest.approx(
        {"full_match": 2 / 3, "char_accuracy": 6 / 7, "precision": 6 / 7, "recall": 6 / 7})


def test_ctc_labels_longer_than_output():
    # Labels wider than the time axis are padded on the prediction side, not truncated.
    y_true = [[A, B, C, 0, 0, 0, 0, 0]]
    assert scores(y_true, ctc_output([A, B, C, BLANK]), "ctc")["full_match"] == 1.0


def one_hot(rows: list[list[int]], classes: int = 3) -> np.ndarray:
    """One-hot targets from 1-based classes; 0 gives an all-zero row."""
    out = np.zeros((len(rows), len(rows[0]), classes), np.float32)
    for r, row in enumerate(rows):
        for p, cls in enumerate(row):
            if cls:
                out[r, p, cls - 1] = 1.0
    return out


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_fixed_length_heads_with_one_hot_targets(head):
    y_true = one_hot([[A, B, C], [C, C, A]])
    if head == "softmax":
        y_pred = np.array([[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]],
                           [[0.1, 0.1, 0.8], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]], np.float32)
    else:  # independent units, not normalised
        y_pred = np.array([[[0.9, 0.2, 0.3], [0.1, 0.6, 0.4], [0.0, 0.1, 0.95]],
                           [[0.2, 0.3, 0.7], [0.8, 0.1, 0.3], [0.9, 0.9, 0.2]]], np.float32)
    # Row 1 reads "ABC" (right), row 2 reads "CAA" (middle character wrong).
    assert scores(y_true, y_pred, head) == pytest.approx(
        {"full_match": 0.5, "char_accuracy": 5 / 6, "precision": 5 / 6, "recall": 5 / 6})


def test_fixed_length_padding_rows_are_not_counted_as_characters():
    y_true = one_hot([[A, B, 0]])
    y_pred = one_hot([[A, B, C]])
    result = scores(y_true, y_pred, "softmax")
    assert result["char_accuracy"] == 1.0
    assert result["precision"] == pytest.approx(2 / 3)


def test_state_accumulates_over_batches_and_resets():
    metric = StringMetric("full_match", "ctc")
    metric.update_state(np.array([[A, 0]]), ctc_output([A, BLANK, BLANK]))
    metric.update_state(np.array([[B, 0], [C, 0]]), ctc_output([A, BLANK, BLANK], [C, C, C]))
    assert float(metric.result()) == pytest.approx(2 / 3)
    metric.reset_state()
    assert float(metric.result()) == 0.0  # no samples: 0, not NaN


def test_works_compiled_in_evaluate():
    model = keras.Sequential([keras.Input((3, 3)), keras.layers.Identity()])
    model.compile(loss="mse", metrics=[StringMetric("full_match", "softmax"), StringMetric("char_accuracy", "softmax")])
    y = one_hot([[A, B, C], [C, C, A]])
    x = y.copy()
    x[1, 2] = [0.0, 0.9, 0.1]  # "CCB"
    result = model.evaluate(x, y, batch_size=1, verbose=0, return_dict=True)
    assert result["full_match"] == pytest.approx(0.5)
    assert result["char_accuracy"] == pytest.approx(5 / 6)


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="kind must be one of"):
        StringMetric("accuracy", "ctc")


def test_config_round_trip():
    metric = StringMetric("precision", "sigmoid", name="p")
    copy = StringMetric.from_config(metric.get_config())
    assert (copy.kind, copy.head, copy.name) == ("precision", "sigmoid", "p")
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(copy) is StringMetric and copy.get_config() == metric.get_config()


@pytest.mark.parametrize("head", ["ctc", "softmax", "sigmoid"])
def test_metrics_for_each_head(head):
    metrics = metrics_for(head)
    assert [m.name for m in metrics] == ["full_match", "char_accuracy", "precision", "recall"]
    string_metrics = [m for m in metrics if isinstance(m, StringMetric)]
    assert all(m.head == head for m in string_metrics)
    assert len(string_metrics) == (2 if head == "sigmoid" else 4)
