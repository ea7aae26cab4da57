"""Distillation (`caocrvfy train --teacher`): the loss, the teacher's checks, and a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caocrvfy.errors import DataError
from caocrvfy.model_config import load_model_config
from caocrvfy.training import train
from caocrvfy.training.config import config_from_args
from caocrvfy.training.distillation import attach_teacher, check_teacher, distillation_loss, softened

pytestmark = pytest.mark.eager_steps


def _probs(rng, batch=3, steps=5, classes=4):
    logits = rng.normal(size=(batch, steps, classes)) * 3
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype("float32")


def test_softened_is_the_softmax_of_the_logits_over_t():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = np.exp(logits / 3) / np.exp(logits / 3).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(softened(probs, 3.0)), expected, rtol=1e-5)


def test_distillation_loss_is_t_squared_kl_per_step_mean():
    rng = np.random.default_rng(1)
    teacher, student = _probs(rng), _probs(rng)
    t = np.asarray(softened(teacher, 2.0))
    s = np.asarray(softened(student, 2.0))
    expected = 4.0 * (t * (np.log(t) - np.log(s))).sum(-1).mean(-1)
    got = np.asarray(distillation_loss(teacher, student, 2.0))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert (got > 0).all()
    np.testing.assert_allclose(np.asarray(distillation_loss(teacher, teacher, 2.0)), 0.0, atol=1e-6)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, make_config):
    """A tiny CTC reader trained for one epoch: the teacher."""
    return train(make_config(tmp_path_factory.mktemp("teacher"), head="ctc", epochs=1))


def _model_and_config(run):
    from caocrvfy.model_enhanced import load_saved_model

    return load_saved_model(run / "model.keras"), load_model_config(run / "config.json")


def test_training_loss_mixes_the_teachers_term_and_evaluation_keeps_its_own(teacher_run):
    import keras

    from caocrvfy.model_enhanced import build_model
    from caocrvfy.training.compile import compile_model

    teacher, config = _model_and_config(teacher_run)
    student = compile_model(build_model(config), 1e-3, jit_compile=False)
    images = np.random.default_rng(2).integers(0, 256, (4, *config.input_shape)).astype("uint8")
    labels = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 1, 2]], "int32")
    y_pred = student(images, training=False)
    own_train = float(student.compute_loss(images, labels, y_pred, None, training=True))
    own_eval = float(student.compute_loss(images, labels, y_pred, None, training=False))
    attach_teacher(student, teacher, temperature=2.0, weight=0.25)
    soft = float(keras.ops.mean(distillation_loss(teacher(images, training=False), y_pred, 2.0)))
    assert soft > 0
    mixed = float(student.compute_loss(images, labels, y_pred, None, training=True))
    assert mixed == pytest.approx(0.75 * own_train + 0.25 * soft, rel=1e-4)
    assert float(student.compute_loss(images, labels, y_pred, None, training=False)) == pytest.approx(own_eval, rel=1e-6)


def test_a_teacher_that_cannot_teach_is_refused_by_name(teacher_run):
    import dataclasses

    from caocrvfy.model_enhanced import build_model

    teacher, config = _model_and_config(teacher_run)
    other_charset = dataclasses.replace(config, charset="0123456789ab")
    with pytest.raises(DataError, match="teacher.*characters"):
        check_teacher(teacher, config, build_model(other_charset), other_charset, "T")
    other_stride = dataclasses.replace(config, column_stride=4)
    with pytest.raises(DataError, match="time steps.*--column-stride"):
        check_teacher(teacher, config, build_model(other_stride), other_stride, "T")
    other_size = dataclasses.replace(config, width=96)
    with pytest.raises(DataError, match="--width"):
        check_teacher(teacher, config, build_model(other_size), other_size, "T")


def test_a_distilled_run_saves_the_student_alone_and_records_the_teacher(teacher_run, make_config, tmp_path, caplog):
    caplog.set_level("INFO")
    run = train(make_config(tmp_path / "student", head="ctc", epochs=1, seed=1, teacher=str(teacher_run),
                            distill_temperature=3.0, distill_weight=0.7))
    saved = json.loads((run / "config.json").read_text())["training"]
    assert (saved["teacher"], saved["distill_temperature"], saved["distill_weight"]) == (str(teacher_run), 3.0, 0.7)
    student, _ = _model_and_config(run)
    teacher, _ = _model_and_config(teacher_run)
    assert len(student.layers) == len(teacher.layers)  # the teacher is not inside the saved student
    assert "distilling from" in caplog.text
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["loss"])


def test_teacher_options_are_checked_before_any_work(capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--teacher", "models/captcha-6x62", "--head", "softmax"])
    assert "--teacher needs the ctc head" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config_from_args(["--teacher", "models/captcha-6x62", "--distill-weight", "1.5"])
    assert "--distill-weight must be at least 0.0 and at most 1.0" in capsys.readouterr().err
