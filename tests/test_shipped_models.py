"""The models shipped under models/: they load, fit the size limit, and read fresh captchas of
their own kind (a small sample, so the bar is well below their measured accuracy)."""

import json
from pathlib import Path

import pytest

from caocrvfy.data.charset import parse_charset
from caocrvfy.data.synthetic import CaptchaSpec, generate
from caocrvfy.inference import Predictor

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = sorted(p.name for p in MODELS.glob("captcha-*") if (p / "model.keras").exists())


def test_the_three_models_are_shipped():
    assert SHIPPED == ["captcha-4x36", "captcha-6x62", "captcha-6x62-small"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reads_fresh_captchas(name, tmp_path):
    folder = MODELS / name
    assert (folder / "model.keras").stat().st_size <= 10 * 1024 * 1024
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test_fresh_cpu"]["count"] >= 2000 and metrics["test_fresh_gpu_box"]["count"] >= 2000
    reader = Predictor.load(folder)
    config = json.loads((folder / "config.json").read_text())
    resolved = config["resolved"]
    # Drawn at the captchas' own size: a model trained with --input-scale reads them scaled.
    spec = CaptchaSpec(parse_charset(resolved["charset"]), resolved["max_length"], config["width"], config["height"])
    fresh = generate(tmp_path / "fresh", 40, spec, workers=1)
    paths = sorted(fresh.glob("*.png"))
    right = sum(p.name.split("_")[0] == prediction.text for p, prediction in zip(paths, reader.predict(paths)))
    assert right >= 32, f"{name} read {right} of 40 fresh captchas"  # 94-99% measured: 80% is a safe bar


def test_the_base_reader_is_shipped_and_reads_any_length_of_the_wide_set():
    folder = MODELS / "base"
    assert (folder / "model.keras").stat().st_size <= 10 * 1024 * 1024
    reader = Predictor.load(folder)
    assert reader.head == "ctc" and reader.length is None  # any length, up to 8
    assert reader.model_config.max_length == 8
    assert set(parse_charset("0-9a-zA-Z+-=?")) == set(reader.charset)
    assert reader.height == 64  # the height labelled folders reach the model at
    training = json.loads((folder / "config.json").read_text())["training"]
    assert (training["style"], training["min_length"], training["length"]) == ("varied", 1, 8)


@pytest.mark.slow
def test_the_default_reader_is_the_int8_form_of_captcha_6x62_and_reads_as_it_does(tmp_path):
    default = Predictor.load()  # what predict, evaluate and serve read without --model
    assert default.path == MODELS / "captcha-6x62" / "model-int8.tflite"
    assert default.path.stat().st_size < (MODELS / "captcha-6x62" / "model.keras").stat().st_size / 2
    keras_reader = Predictor.load(MODELS / "captcha-6x62")
    assert (default.charset, default.length) == (keras_reader.charset, keras_reader.length)
    fresh = generate(tmp_path / "fresh", 40, CaptchaSpec(default.charset, 6, default.width, default.height), workers=1)
    paths = sorted(fresh.glob("*.png"))
    texts = [p.text for p in default.predict(paths)]
    assert sum(p.name.split("_")[0] == text for p, text in zip(paths, texts)) >= 32
    agree = sum(a == b.text for a, b in zip(texts, keras_reader.predict(paths)))
    assert agree >= 38, f"the int8 reader and model.keras agree on {agree} of 40"  # 98.33% each on 3,000


@pytest.mark.slow
def test_predict_without_a_model_reads_through_tflite_quietly(tmp_path):
    import subprocess
    import sys

    fresh = generate(tmp_path / "fresh", 3, CaptchaSpec(parse_charset("0-9a-zA-Z"), 6, 160, 60), workers=1)
    quiet = subprocess.run([sys.executable, "-m", "caocrvfy", "predict", str(fresh)], capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 0 and quiet.stdout.count("\t") == 6
    assert quiet.stderr == ""  # no XNNPACK, oneDNN or cuda lines
