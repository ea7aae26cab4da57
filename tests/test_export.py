"""Exports (SavedModel, ONNX, TFLite) of a tiny untrained CTC model read as its .keras file does.

The model is untrained, so its outputs have near-ties; argmax is compared wherever the .keras
model's two best classes are further apart than float rounding can move them (almost
everywhere, which the tests also check).
"""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from captcha.image import ImageCaptcha

from caocrvfy.cli import main as cli_main
from caocrvfy.errors import DataError
from caocrvfy.inference import Predictor
from caocrvfy.inference.export import export_model, output_path, resize_batch
from caocrvfy.inference.runtimes import embedded_config, load_runtime
from caocrvfy.model_config import ModelConfig
from caocrvfy.model_enhanced import build_model

CHARSET = "0123456789"
SHAPE = (24, 64, 1)
TINY = dict(filters=(8, 8, 8, 8), dense_units=8, rnn_units=8)
TIE = 1e-5  # log-probability gap below which two classes count as tied


def save_tiny_run(folder: Path, head: str = "ctc", seed: int = 1) -> Path:
    """An untrained tiny model saved as a run folder: model.keras, config.json, metrics.json."""
    keras.utils.set_random_seed(seed)
    model = build_model(charset=CHARSET, max_length=3, height=SHAPE[0], width=SHAPE[1], head=head, **TINY)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    config = ModelConfig(charset=CHARSET, max_length=3, fixed_length=False, head=head, height=SHAPE[0], width=SHAPE[1],
                         **TINY)
    (folder / "config.json").write_text(json.dumps({"version": 2, "model": config.to_json()}))
    (folder / "metrics.json").write_text(json.dumps({"validation": {"full_match": 0.0, "count": 0}}))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return save_tiny_run(tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """30 captchas of the model's size, drawn in this process."""
    folder = tmp_path_factory.mktemp("images")
    draw = ImageCaptcha(width=SHAPE[1], height=SHAPE[0])
    labels = ["".join(map(str, row)) for row in np.random.default_rng(0).integers(0, 10, (30, 3))]
    for i, label in enumerate(labels):
        draw.generate_image(label).save(folder / f"{label}_{i}.png")
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module")
def exports(run, tmp_path_factory) -> dict[str, Path]:
    """Each format exported once; ONNX through the command line."""
    out = tmp_path_factory.mktemp("exports")
    found = {
        "savedmodel": export_model(run, "savedmodel", out / "savedmodel"),
        "tflite": export_model(run, "tflite", out),
    }
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        return found
    assert cli_main(["export", "--model", str(run), "--format", "onnx", "--out", str(out / "model.onnx")]) == 0
    found["onnx"] = out / "model.onnx"
    return found


def exported(exports: dict, fmt: str) -> Path:
    if fmt not in exports:
        pytest.skip("ONNX export needs tf2onnx and onnxruntime: pip install '.[export]'")
    return exports[fmt]


def assert_same_reading(expected: np.ndarray, actual: np.ndarray) -> None:
    """Same argmax wherever the expected outputs are not tied, and close probabilities."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    top2 = np.sort(np.log(np.maximum(expected, 1e-30)), -1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > TIE
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(actual.argmax(-1)[decided], expected.argmax(-1)[decided])


@pytest.fixture(scope="module")
def reference(run, images):
    reader = Predictor.load(run)
    batch = np.stack([reader.prepare(p) for p in images])
    return reader, batch, np.asarray(reader.model.predict_on_batch(batch))


# ---------------------------------------------------------------- reading like the .keras model


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx", "tflite"])
def test_export_outputs_match_keras(exports, reference, fmt):
    _, batch, expected = reference
    runtime = load_runtime(exported(exports, fmt))
    assert runtime.format == fmt
    assert_same_reading(expected, np.asarray(runtime.predict_on_batch(batch)))
    assert_same_reading(expected[:1], np.asarray(runtime.predict_on_batch(batch[:1])))  # batch size changes


def test_tflite_keeps_one_interpreter_for_each_padded_batch_size(exports, reference):
    _, batch, expected = reference
    runtime = load_runtime(exported(exports, "tflite"))
    for n in (30, 1, 3, 30, 4):  # padded to 32, 1, 4, 32, 4
        assert_same_reading(expected[:n], np.asarray(runtime.predict_on_batch(batch[:n])))
    assert runtime.prepared_sizes == [1, 4, 32]


def test_serving_a_tflite_file_warms_up_each_padded_batch_size(exports):
    pytest.importorskip("fastapi")
    from caocrvfy.serving.app import WARMUP_PADDED, create_app

    reader = Predictor.load(exported(exports, "tflite"))
    app = create_app(reader)
    app.state.batcher.close()
    assert reader.model.prepared_sizes == [1 << i for i in range(WARMUP_PADDED.bit_length())] == [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_predictor_reads_the_same_strings_from_exports(exports, reference, images, fmt):
    reader, _, _ = reference
    texts = [p.text for p in reader.predict(images)]
    assert len(set(texts)) > 1  # the untrained model still reads different images differently
    other = Predictor.load(exported(exports, fmt))
    assert other.path.suffix == f".{fmt}" and other.charset == CHARSET
    assert [p.text for p in other.predict(images)] == texts


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx", "tflite"])
@pytest.mark.parametrize("size", [(48, 128), (17, 50)])
def test_exports_take_images_of_any_size(exports, reference, fmt, size):
    reader, _, _ = reference
    batch = np.random.default_rng(0).integers(0, 256, (3, *size, 1), dtype=np.uint8)
    expected = np.asarray(reader.model.predict_on_batch(np.asarray(resize_batch(batch, *SHAPE[:2]))))
    runtime = load_runtime(exported(exports, fmt))
    assert_same_reading(expected, np.asarray(runtime.predict_on_batch(batch)))


def test_savedmodel_decodes_encoded_images(exports, reference, images):
    import tensorflow as tf

    reader, _, _ = reference
    loaded = tf.saved_model.load(str(exports["savedmodel"]))
    data = tf.constant([p.read_bytes() for p in images])
    outputs = loaded.signatures["serve_bytes"](image_bytes=data)["outputs"].numpy()
    # Pillow's grey conversion and TF's PNG decoder can differ by one level in a pixel.
    np.testing.assert_allclose(outputs, reader.model.predict_on_batch(np.stack([reader.prepare(p) for p in images])),
                               atol=1e-3)
    assert json.loads(loaded.config_json.numpy())["model"]["charset"] == CHARSET


# ---------------------------------------------------------------- decoding information travels along


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx", "tflite"])
def test_config_and_metrics_are_copied_beside_the_export(exports, run, fmt):
    path = exported(exports, fmt)
    folder = path if fmt == "savedmodel" else path.parent
    for name in ("config.json", "metrics.json"):
        assert (folder / name).read_text() == (run / name).read_text()


def test_onnx_metadata_carries_the_decoding_information(exports, run):
    runtime = load_runtime(exported(exports, "onnx"))
    meta = runtime.metadata
    assert meta["caocrvfy.charset"] == CHARSET and meta["caocrvfy.head"] == "ctc"
    assert json.loads(meta["caocrvfy.input_shape"]) == list(SHAPE)
    assert embedded_config(runtime) == json.loads((run / "config.json").read_text())
    (input_,) = runtime.session.get_inputs()
    assert input_.type == "tensor(uint8)" and input_.shape[-1] == 1
    assert all(not isinstance(d, int) for d in input_.shape[:3])  # batch, height, width are free


def test_cli_predict_reads_an_onnx_file(exports, run, images, capsys):
    path = exported(exports, "onnx")
    assert cli_main(["predict", "--model", str(run), *map(str, images[:5])]) == 0
    from_keras = capsys.readouterr().out.splitlines()
    assert cli_main(["predict", "--model", str(path), *map(str, images[:5])]) == 0
    from_onnx = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in from_onnx] == [line.split("\t")[:2] for line in from_keras]


# ---------------------------------------------------------------- user errors


def test_output_path_rules(tmp_path):
    assert output_path(tmp_path, "onnx", None) == tmp_path / "model.onnx"
    assert output_path(tmp_path, "tflite", tmp_path) == tmp_path / "model.tflite"
    assert output_path(tmp_path, "onnx", tmp_path / "new") == tmp_path / "new" / "model.onnx"
    assert output_path(tmp_path, "onnx", tmp_path / "x.onnx") == tmp_path / "x.onnx"
    assert output_path(tmp_path, "savedmodel", None) == tmp_path / "savedmodel"
    with pytest.raises(DataError, match="does not end in .tflite"):
        output_path(tmp_path, "tflite", tmp_path / "model.onnx")
    with pytest.raises(DataError, match="unknown export format"):
        output_path(tmp_path, "pt", None)


def test_export_refuses_a_folder_holding_another_model(run, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="belongs to another model"):
        export_model(run, "tflite", tmp_path)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.touch()
    with pytest.raises(DataError, match="already an export"):
        export_model(onnx_file, "onnx")


def test_load_runtime_names_files_it_cannot_run(tmp_path):
    with pytest.raises(DataError, match="picture.png is not a model file"):
        load_runtime(tmp_path / "picture.png")
    (tmp_path / "broken.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(DataError, match="broken.tflite is not a TFLite model"):
        load_runtime(tmp_path / "broken.tflite")
    pytest.importorskip("onnxruntime")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(DataError, match="broken.onnx is not an ONNX model"):
        load_runtime(tmp_path / "broken.onnx")


def test_default_export_goes_beside_the_model(run, tmp_path):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    assert export_model(copy, "tflite") == copy / "model.tflite"
    assert (copy / "config.json").read_text() == (run / "config.json").read_text()
    assert Predictor.load(copy).path.name == "model.keras"  # the folder still means the .keras model


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_exports_read_under_a_constraint_like_keras(exports, reference, images, fmt):
    from caocrvfy.inference.decoding import Constraint

    reader, _, _ = reference
    rule = Constraint.of(length=2, allowed="1357")
    texts = [p.text for p in reader.predict(images, constraint=rule)]
    assert all(len(t) == 2 and set(t) <= set("1357") for t in texts)
    assert [p.text for p in Predictor.load(exported(exports, fmt)).predict(images, constraint=rule)] == texts


def test_int8_tflite_is_smaller_and_reads_close_to_float(tmp_path, images):
    """Weights above TFLite's 1,024-element floor are stored as int8: wider layers than TINY."""
    keras.utils.set_random_seed(3)
    folder = tmp_path / "wide"
    folder.mkdir()
    build_model(charset=CHARSET, max_length=3, height=SHAPE[0], width=SHAPE[1], filters=(8, 16, 32, 32),
                dense_units=64, rnn_units=64).save(folder / "model.keras")
    config = ModelConfig(charset=CHARSET, max_length=3, fixed_length=False, height=SHAPE[0], width=SHAPE[1],
                         filters=(8, 16, 32, 32), dense_units=64, rnn_units=64)
    (folder / "config.json").write_text(json.dumps({"version": 2, "model": config.to_json()}))
    plain = export_model(folder, "tflite", tmp_path / "float")
    assert cli_main(["export", "--model", str(folder), "--format", "tflite", "--int8", "--out",
                     str(tmp_path / "int8")]) == 0
    small = tmp_path / "int8" / "model.tflite"
    assert small.stat().st_size < 0.6 * plain.stat().st_size
    batch = np.stack([Predictor.load(folder).prepare(p) for p in images])
    expected = load_runtime(plain).predict_on_batch(batch)
    actual = load_runtime(small).predict_on_batch(batch)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() < 0.05
    assert Predictor.load(small).predict(images[:2])[0].text is not None


def test_int8_is_refused_for_formats_where_it_does_not_pay(run, tmp_path, caplog):
    with pytest.raises(DataError, match="--int8 is for --format tflite"):
        export_model(run, "onnx", tmp_path / "m.onnx", int8=True)
    assert cli_main(["export", "--model", str(run), "--format", "savedmodel", "--int8", "--out", str(tmp_path / "s")]) != 0
    assert "--int8 is for --format tflite only, and savedmodel" in caplog.text
    assert not (tmp_path / "s").exists()
