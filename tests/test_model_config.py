"""ModelConfig, the one source of architecture defaults, and config.json's migration."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

import caocrvfy
from caocrvfy.errors import DataError
from caocrvfy.model_config import ModelConfig, load_model_config, migrate, read_config
from caocrvfy.model_enhanced import build_model
from caocrvfy.training.config import TrainConfig

REPO = Path(caocrvfy.__file__).resolve().parent.parent
SHIPPED = ("captcha-6x62", "captcha-4x36", "captcha-6x62-small")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_version_1_configs_migrate_to_the_architecture_they_were_built_with(name):
    raw = json.loads((REPO / "models" / name / "config.json").read_text())
    assert "version" not in raw and "resolved" in raw  # the shipped files stay as they were written
    model = load_model_config(REPO / "models" / name / "config.json")
    assert model.charset == raw["resolved"]["charset"] and model.head == "ctc"
    assert list(model.input_shape) == raw["resolved"]["input_shape"]
    assert model.filters == tuple(raw["filters"]) and model.rnn_units == raw["rnn_units"]
    # Written before column_stride existed: those models were built with stride 4.
    assert model.column_stride == raw.get("column_stride", 4)


def test_migrated_shipped_config_rebuilds_the_same_layers():
    import keras

    folder = REPO / "models" / "captcha-6x62-small"
    saved = keras.models.load_model(folder / "model.keras", compile=False)
    rebuilt = build_model(load_model_config(folder / "config.json"))
    assert [(layer.name, [w.shape for w in layer.weights]) for layer in rebuilt.layers] == \
        [(layer.name, [w.shape for w in layer.weights]) for layer in saved.layers]


def test_version_1_without_a_setting_falls_back_to_its_default():
    raw = {"ignore_case": True, "resolved": {"charset": "abc", "max_length": 2, "head": "softmax",
                                             "input_shape": [20, 40, 3], "train_images": 9}}
    config = migrate(raw)
    assert config["version"] == 2 and config["run"] == {"train_images": 9} and config["migrated_from"] == 1
    model = ModelConfig.from_json(config["model"])
    assert (model.charset, model.max_length, model.head, model.input_shape) == ("abc", 2, "softmax", (20, 40, 3))
    assert model.ignore_case is True and model.fixed_length is False  # not recorded: not held to a length
    assert model.filters == ModelConfig().filters and model.column_stride == 4


def test_removed_layouts_are_kept_for_the_record():
    raw = {"sequence": "conv", "stem": "conv", "input_scale": 0.5,
           "resolved": {"charset": "ab", "max_length": 2, "head": "ctc", "input_shape": [12, 40, 1]}}
    assert migrate(raw)["model"]["legacy"] == {"sequence": "conv", "input_scale": 0.5}


def test_model_config_round_trips_through_json():
    model = ModelConfig(charset="0123", max_length=4, head="sigmoid", filters=(8, 16), augment=True)
    assert ModelConfig.from_json(json.loads(json.dumps(model.to_json()))) == model


@pytest.mark.parametrize("text,match", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"data": null}', "neither a version-2"),
    ('{"resolved": {"charset": "ab"}}', "lacks the setting"),
    ('{"version": 2, "model": {"charset": "ab", "colour": 1}}', "unknown model setting"),
    ('{"version": 2, "model": {"charset": ""}}', "charset '' is empty"),
    ('{"version": 2, "model": {"charset": "ab", "width": 0}}', "width 0 must be a positive"),
    ('{"version": 2, "model": {"charset": "ab", "head": "crf"}}', "head 'crf' is not one of"),
])
def test_a_bad_config_json_is_one_sentence_naming_the_file(tmp_path, text, match):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as caught:
        read_config(path)
    assert str(path) in str(caught.value)


def test_training_defaults_for_the_model_come_from_model_config():
    model, training = ModelConfig(), TrainConfig()
    shared = {f.name for f in dataclasses.fields(ModelConfig)} & {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"filters", "dense_units", "rnn_units", "column_stride", "attention", "head"} <= shared
    for name in shared - {"charset", "augment"}:  # None (from the data) and "auto" on the command line
        assert getattr(training, name) == getattr(model, name), name
    # build_model takes ModelConfig's fields and nothing else, with no defaults of its own.
    assert list(inspect.signature(build_model).parameters) == ["config", "fields"]
