import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from caocrvfy.focal_loss import BinaryFocalLoss
from caocrvfy.losses import FocalCTCLoss
from caocrvfy.model_enhanced import build_model, model_head
from caocrvfy.training.compile import DEFAULT_LEARNING_RATE, compile_model

SHAPE = (24, 64, 1)
TINY = dict(filters=(8, 8, 8, 8), dense_units=8, rnn_units=8)
DIGITS = "0123456789"


def tiny_model(head: str, **kwargs) -> keras.Model:
    return build_model(charset="0123456789", max_length=3, height=SHAPE[0], width=SHAPE[1], head=head,
                       **{**TINY, **kwargs})


@pytest.mark.parametrize("head,output_shape", [
    ("ctc", (None, 8, 11)),      # width / 8 steps, blank + 10 classes
    ("softmax", (None, 3, 10)),
    ("sigmoid", (None, 3, 10)),
])
def test_output_shapes_for_each_head(head, output_shape):
    model = tiny_model(head)
    assert model.output.shape == output_shape
    assert model_head(model) == head
    out = np.asarray(model(np.zeros((2, *SHAPE), np.uint8), training=False))
    assert out.shape == (2, *output_shape[1:])
    assert np.all((out >= 0) & (out <= 1))
    if head != "sigmoid":
        np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_input_is_uint8_and_scaled_inside():
    model = tiny_model("ctc")
    assert model.inputs[0].dtype == "uint8"
    assert model.get_layer("scale").scale == pytest.approx(1 / 255)


@pytest.mark.parametrize("options", [
    dict(column_stride=8), dict(attention=False), dict(augment=True),
])
def test_variants_keep_the_ctc_output_shape(options):
    model = tiny_model("ctc", **options)
    assert model.output.shape == (None, 8, 11)
    out = model(np.full((1, *SHAPE), 128, np.uint8), training=False)
    assert np.all(np.isfinite(np.asarray(out)))


def test_column_stride_4_doubles_the_ctc_steps():
    assert tiny_model("ctc", column_stride=4).output.shape == (None, 16, 11)  # 64 / 4 columns
    with pytest.raises(ValueError, match="column_stride 2 must be one of"):
        tiny_model("ctc", column_stride=2)


def test_augmentation_only_in_training():
    model = tiny_model("softmax", augment=True)
    assert model.get_layer("aug_rotate") is not None
    x = np.random.default_rng(0).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))


def test_invalid_head_is_an_error():
    with pytest.raises(ValueError, match="head .attention. is not one of"):
        tiny_model("attention")


def test_too_narrow_for_ctc_is_an_error():
    # 48 pixels give 6 steps of 8 columns; 3 characters need 2 * 3 + 1 = 7.
    with pytest.raises(ValueError, match="width of at least 56 or a column stride of 4"):
        build_model(charset=DIGITS, max_length=3, height=24, width=48, **TINY)
    assert build_model(charset=DIGITS, max_length=3, height=24, width=56, **TINY).output.shape == (None, 7, 11)
    with pytest.raises(ValueError, match="width of at least 28."):
        build_model(charset=DIGITS, max_length=3, height=24, width=24, column_stride=4, **TINY)
    assert build_model(charset=DIGITS, max_length=3, height=24, width=24, head="softmax",
                       **TINY).output.shape == (None, 3, 10)


def test_model_head_of_a_foreign_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
    with pytest.raises(ValueError, match="no caocrvfy output layer"):
        model_head(model)


@pytest.mark.parametrize("head,focal,loss_type", [
    ("sigmoid", True, BinaryFocalLoss),
    ("softmax", True, keras.losses.CategoricalFocalCrossentropy),
    ("ctc", True, FocalCTCLoss),
    ("sigmoid", False, keras.losses.BinaryCrossentropy),
    ("softmax", False, keras.losses.CategoricalCrossentropy),
    ("ctc", False, FocalCTCLoss),
])
def test_compile_model_picks_the_loss(head, focal, loss_type):
    model = compile_model(tiny_model(head), loss="focal" if focal else "ce", focal_gamma=3.0, focal_alpha=0.4)
    assert type(model.loss) is loss_type
    if head == "ctc":
        assert model.loss.gamma == (3.0 if focal else 0.0)  # no focal loss: plain CTC
    elif focal:
        config = model.loss.get_config()
        assert (config["gamma"], config["alpha"]) == (3.0, 0.4)
    assert float(model.optimizer.learning_rate) == pytest.approx(DEFAULT_LEARNING_RATE)


def test_compile_model_metrics_and_learning_rate():
    model = compile_model(tiny_model("ctc"), learning_rate=0.01)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    x = np.zeros((2, *SHAPE), np.uint8)
    y = np.array([[1, 2, 3], [4, 0, 0]], np.int32)
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) == {"loss", "full_match", "char_accuracy", "precision", "recall"}
    assert np.isfinite(result["loss"])


@pytest.mark.parametrize("head", ["ctc", "softmax", "sigmoid"])
def test_one_training_step_is_finite(head):
    x = np.random.default_rng(0).integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    labels = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 1, 2]])
    model = compile_model(tiny_model(head))
    y = labels if head == "ctc" else np.eye(10, dtype=np.float32)[labels - 1]
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_a_loss_of_several_terms_logs_each_term(caplog):
    from caocrvfy.training.callbacks import EpochLog

    x = np.random.default_rng(0).integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    y = np.eye(10, dtype=np.float32)[np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 1, 2]])]
    model = compile_model(tiny_model("softmax"), loss="focal+dice", loss_weights="0.7,1.8")
    with caplog.at_level("INFO", logger="caocrvfy"):
        logs = model.fit(x, y, validation_data=(x, y), epochs=1, batch_size=4, verbose=0,
                         callbacks=[EpochLog(1)]).history
    assert logs["loss"][0] == pytest.approx(logs["focal_term"][0] + logs["dice_term"][0], rel=1e-4)
    line = next(r.getMessage() for r in caplog.records if "epoch" in r.getMessage())
    terms = line.split("(", 1)[1].split(")", 1)[0].split()
    assert sorted(terms) == [f"dice={logs['dice_term'][0]:.4f}", f"focal={logs['focal_term'][0]:.4f}"]


def test_a_checkpoint_with_a_loss_of_several_terms_loads_compiled(tmp_path):
    model = compile_model(tiny_model("sigmoid"), loss="focal+tversky", loss_weights="1,2", class_weights=[1.0] * 10)
    x = np.zeros((2, *SHAPE), np.uint8)
    y = np.eye(10, dtype=np.float32)[np.array([[1, 2, 3], [4, 5, 6]])]
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "last.keras")  # what --resume reloads, optimizer and metrics included
    again = keras.models.load_model(tmp_path / "last.keras")
    logs = again.evaluate(x, y, verbose=0, return_dict=True)
    assert {"focal_term", "tversky_term"} <= set(logs)
    assert logs["loss"] == pytest.approx(logs["focal_term"] + logs["tversky_term"], rel=1e-4)
    assert again.loss.weights == (1.0, 2.0) and again.loss.class_weights == [1.0] * 10


@pytest.mark.slow
def test_saved_models_load_with_plain_load_model_in_a_fresh_process(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    for head in ("ctc", "softmax", "sigmoid"):
        model = compile_model(tiny_model(head))
        model.save(tmp_path / f"{head}.keras")
        np.save(tmp_path / f"{head}.npy", np.asarray(model(x, training=False)))
    script = textwrap.dedent(f"""
        import numpy as np
        import caocrvfy, keras
        x = np.load({str(tmp_path / "x.npy")!r})
        for head in ("ctc", "softmax", "sigmoid"):
            model = keras.models.load_model({str(tmp_path)!r} + f"/{{head}}.keras")
            expected = np.load({str(tmp_path)!r} + f"/{{head}}.npy")
            np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, rtol=1e-5, atol=1e-6)
            print(head, type(model.loss).__name__, model.layers[-1].name)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:3] == [
        "ctc FocalCTCLoss ctc_output",
        "softmax CategoricalFocalCrossentropy softmax_output",
        "sigmoid BinaryFocalLoss sigmoid_output",
    ]


def test_saved_model_keeps_custom_metrics(tmp_path):
    model = compile_model(tiny_model("softmax"))
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.zeros((1, *SHAPE), np.uint8)
    y = np.eye(10, dtype=np.float32)[[[0, 1, 2]]]
    result = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert {"full_match", "char_accuracy", "precision", "recall"} <= set(result)
    assert type(loaded.loss) is keras.losses.CategoricalFocalCrossentropy


@pytest.mark.slow
def test_importing_caocrvfy_first_turns_on_tensorflows_onednn_cpu_kernels():
    # TensorFlow leaves oneDNN off on CPUs without AVX-512 VNNI/BF16 or AMX; caocrvfy turns it
    # on (1.4-2x the training speed on an AVX2 CPU) unless the user has chosen.
    script = ("import caocrvfy\nfrom tensorflow.python.util import _pywrap_util_port as port\n"
              "print(port.IsMklEnabled())")
    seen = {}
    for setting in (None, "0"):
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if setting is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = setting
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        seen[setting] = result.stdout.strip()
    assert seen == {None: "True", "0": "False"}
