"""Inputs that used to give a wrong answer without a word, or a traceback: each is now named
in one sentence, skipped and listed, or read right."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import caocrvfy
from caocrvfy.cli import main as cli_main
from caocrvfy.data.folders import read_folder
from caocrvfy.data.images import open_image
from caocrvfy.errors import DataError
from caocrvfy.evaluation import read_labelled_folder
from caocrvfy.inference import Predictor

REPO = Path(caocrvfy.__file__).resolve().parent.parent
SMALL = REPO / "models" / "captcha-4x36"  # 4 of 0-9A-Z, 128 x 64


def write(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (128, 64), 255).save(folder / name)
    return folder


# ---------------------------------------------------------------- labels


def test_evaluate_skips_labels_the_model_cannot_read(tmp_path):
    folder = write(tmp_path / "d", ["AB12_0.png", "ab12_1.png", "IMG-0001.png", "photo.png", "PHOTO.png", "AB1_2.png"])
    reader = Predictor.load(SMALL)
    records, paths, skipped = read_labelled_folder(reader, folder)
    assert [p.name for p in paths] == ["AB12_0.png"] and len(records) == 1
    reasons = dict(skipped)
    assert "outside the character set" in reasons["ab12_1.png"]
    assert "outside the character set" in reasons["IMG-0001.png"]  # '-' is not a character it reads
    assert "outside the character set" in reasons["photo.png"]
    assert "has 5 characters, the model reads 4" in reasons["PHOTO.png"]
    assert "has 3 characters, the model reads 4" in reasons["AB1_2.png"]


def test_labels_csv_duplicates_missing_columns_and_paths_outside_are_listed(tmp_path):
    folder = write(tmp_path / "d", ["a.png", "b.png", "sub/c.png"])
    write(tmp_path, ["outside.png"])
    (folder / "labels.csv").write_text(
        "file,label\na.png,AB12\nb.png\na.png,CD34\n../outside.png,EF56\n"
        f"{tmp_path / 'outside.png'},GH78\nsub/c.png,JK90\n,XY12\n")
    found = read_folder(folder)
    assert [(p.name, label) for p, label in zip(found.paths, found.labels)] == [("a.png", "AB12"), ("c.png", "JK90")]
    reasons = dict(found.skipped)
    assert "row 3 needs two columns" in reasons["b.png"]
    assert "listed again in labels.csv row 4 (row 2 is used)" in reasons["a.png"]
    assert reasons["../outside.png"].startswith("refused")
    assert reasons[str(tmp_path / "outside.png")].startswith("refused")
    assert "row 8 needs two columns" in reasons["labels.csv row 8"]


def test_a_folder_of_symbolic_links_to_images_elsewhere_still_reads(tmp_path):
    import os

    source = write(tmp_path / "source", ["AB12_0.png", "CD34_1.png"])
    folder = tmp_path / "split"
    folder.mkdir()
    for image in source.iterdir():
        os.symlink(image, folder / image.name)
    assert read_folder(folder).labels == ["AB12", "CD34"]
    (folder / "labels.csv").write_text("./AB12_0.png,AB12\nx/../AB12_0.png,ZZ99\nCD34_1.png,CD34\n")
    found = read_folder(folder)
    assert found.labels == ["AB12", "CD34"] and "listed again" in dict(found.skipped)["AB12_0.png"]


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_grey_modes_decode_to_the_same_grey_levels(tmp_path, mode):
    levels = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (32, 1))  # a left-to-right ramp
    if mode == "I;16":
        image = Image.fromarray(levels.astype(np.uint16) * 257)
    elif mode == "I":
        image = Image.fromarray(levels.astype(np.int32) * 257, "I")
    else:
        image = Image.fromarray(levels.astype(np.float32) / 255.0, "F")
    path = tmp_path / ("x.tif" if mode in ("I", "F") else "x.png")
    image.save(path)
    got = open_image(path, 32, 64, 1)[..., 0]
    assert np.abs(got.astype(int) - levels).max() <= 1, mode  # not all white, the same ramp


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_transparent_pixels_read_as_the_white_background(tmp_path, mode):
    ink = np.zeros((32, 64), np.uint8)  # black everywhere; the left half transparent
    if mode == "LA":
        alpha = np.full_like(ink, 255)
        alpha[:, :32] = 0
        image = Image.fromarray(np.stack([ink, alpha], -1), "LA")
    else:
        palette = ink.copy()
        palette[:, :32] = 1  # index 1 (also black) is the transparent one
        image = Image.fromarray(palette, "P")
        image.putpalette([0, 0, 0, 0, 0, 0] + [255] * 762)
        image.info["transparency"] = 1
    image.save(tmp_path / "x.png", transparency=image.info.get("transparency"))
    got = open_image(tmp_path / "x.png", 32, 64, 1)[..., 0]
    assert got[:, :30].min() >= 254 and got[:, 34:].max() <= 1, mode  # white where transparent, black ink


def test_a_sixteen_bit_png_reads_like_its_eight_bit_copy(tmp_path):
    from captcha.image import ImageCaptcha

    reader = Predictor.load(SMALL)
    eight = ImageCaptcha(width=128, height=64).generate_image("AB12").convert("L")
    sixteen = Image.fromarray(np.asarray(eight).astype(np.uint16) * 257)
    sixteen.save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    blank = reader.predict([Image.new("L", (128, 64), 255)])[0].text
    read = reader.predict([eight])[0].text
    assert read != blank  # a real captcha, not the white page the old decoder made of it
    assert reader.predict([tmp_path / "sixteen.png"])[0].text == read


def test_tiny_and_stretched_images_are_read_with_a_warning(tmp_path, caplog):
    reader = Predictor.load(SMALL)
    Image.new("L", (1, 1), 255).save(tmp_path / "dot.png")
    Image.new("L", (600, 40), 255).save(tmp_path / "strip.png")
    Image.new("L", (130, 60), 255).save(tmp_path / "fine.png")
    with caplog.at_level("WARNING"):
        reader.predict([tmp_path / "dot.png", tmp_path / "strip.png", tmp_path / "fine.png"])
    assert "dot.png is only 1x1 pixels" in caplog.text
    assert "strip.png is 600x40" in caplog.text and "stretched" in caplog.text
    assert "fine.png" not in caplog.text


# ---------------------------------------------------------------- model files


@pytest.fixture
def model_copy(tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(SMALL, folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["resolved"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("change,match", [
    (dict(charset=""), "charset '' is empty"),
    (dict(charset="0123456789"), "charset has 10 characters but .* reads 36"),
    (dict(max_length=-1), "max_length -1 must be a positive"),
    (dict(input_shape=[64, 0, 1]), "width 0 must be a positive"),
    (dict(head="crf"), "head 'crf' is not one of"),
])
def test_a_config_json_that_does_not_fit_its_model_is_refused_by_field(model_copy, change, match):
    edit_config(model_copy, **change)
    with pytest.raises(DataError, match=match) as caught:
        Predictor.load(model_copy)
    assert "config.json" in str(caught.value)


def test_a_config_json_without_its_resolved_block_or_not_json(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    del config["resolved"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="not a caocrvfy config.json"):
        Predictor.load(model_copy)
    (model_copy / "config.json").write_text("{ not json")
    with pytest.raises(DataError, match="not valid JSON"):
        Predictor.load(model_copy)


def test_a_corrupt_model_file_is_called_corrupt_not_missing(model_copy):
    data = (model_copy / "model.keras").read_bytes()
    (model_copy / "model.keras").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="not a .keras file .* truncated or corrupt"):
        Predictor.load(model_copy)


def test_a_model_with_code_in_it_is_refused_in_one_sentence(tmp_path):
    import keras

    folder = tmp_path / "lambda"
    folder.mkdir()
    inputs = keras.Input((64, 128, 1), dtype="uint8")
    x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32") / 255.0)(inputs)
    outputs = keras.layers.Dense(37, activation="softmax")(keras.layers.Reshape((32, -1))(x))
    keras.Model(inputs, outputs).save(folder / "model.keras")
    shutil.copyfile(SMALL / "config.json", folder / "config.json")
    assert zipfile.is_zipfile(folder / "model.keras")
    for call in (lambda: Predictor.load(folder),
                 lambda: __import__("caocrvfy.inference.export", fromlist=["x"]).export_model(folder, "onnx")):
        with pytest.raises(DataError, match="safe mode refuses"):
            call()
    assert cli_main(["export", "--model", str(folder), "--format", "onnx"]) == 2


def test_predict_batch_size_zero_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        cli_main(["predict", "--batch-size", "0", "x.png"])
    assert "--batch-size: must be at least 1" in capsys.readouterr().err


def test_training_on_a_folder_of_one_image_says_how_many_are_needed(tmp_path, make_config):
    from caocrvfy.training import train

    folder = write(tmp_path / "one", ["123_0.png"])
    with pytest.raises(DataError, match="needs at least 2"):
        train(make_config(tmp_path / "run", data=str(folder), charset=None))


def test_case_folded_evaluation_checks_labels_against_the_folded_set(tmp_path):
    # captcha-4x36 reads upper case only: compared case-folded, lower-case labels are its characters.
    folder = write(tmp_path / "d", ["ab12_0.png", "CD34_1.png", "ab-1_2.png"])
    reader = Predictor.load(SMALL)
    records, _, skipped = read_labelled_folder(reader, folder, ignore_case=True)
    assert sorted(t for t, _, _ in records) == ["ab12", "cd34"]
    assert [name for name, _ in skipped] == ["ab-1_2.png"]
    # A model trained with --ignore-case (lower-case characters) reads upper-case labels folded.
    reader.ignore_case, reader.charset = True, "0123456789abcdefghijklmnopqrstuvwxyz"
    records, _, _ = read_labelled_folder(reader, folder)
    assert sorted(t for t, _, _ in records) == ["ab12", "cd34"]


@pytest.mark.parametrize("args,message", [
    (["generate", "--length", "0"], "--length: must be at least 1"),
    (["generate", "--width", "0"], "--width: must be at least 1"),
    (["serve", "--header-timeout", "-1"], "--header-timeout: must be above 0"),
    (["serve", "--max-body-bytes", "0"], "--max-body-bytes: must be at least 1"),
    (["serve", "--port", "99999"], "--port: a port is a whole number from 0 to 65535"),
    (["serve", "--batch-window-ms", "-5"], "--batch-window-ms: must be 0 or more"),
])
def test_command_options_out_of_range_are_refused_by_name(args, message, capsys):
    with pytest.raises(SystemExit):
        cli_main(args)
    assert message in capsys.readouterr().err


def test_generate_with_an_empty_charset_is_one_sentence(capsys):
    assert cli_main(["generate", "--charset", "", "--count", "1", "--out", "/nonexistent/x"]) == 2
