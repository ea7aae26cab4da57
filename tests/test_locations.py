"""Where the shipped models and the synthetic cache are found: a checkout, an installed package,
or the environment variables that override both."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from caocrvfy import locations
from caocrvfy.errors import DataError


def test_a_checkout_finds_its_own_models_and_data_folders():
    root = locations.checkout_root()
    assert root is not None and (root / "pyproject.toml").is_file()
    assert locations.default_model() == root / "models" / "captcha-6x62"
    assert locations.cache_dir() == root / "data"
    assert locations.runs_dir() == root / "models" / "runs"


def test_environment_variables_override_both(monkeypatch, tmp_path):
    monkeypatch.setenv("CAOCRVFY_MODELS", str(tmp_path / "m"))
    monkeypatch.setenv("CAOCRVFY_CACHE", str(tmp_path / "c"))
    assert locations.default_model() == tmp_path / "m" / "captcha-6x62"
    assert locations.cache_dir() == tmp_path / "c"


def test_an_installed_package_reads_the_models_pip_put_under_its_prefix(monkeypatch, tmp_path):
    monkeypatch.delenv("CAOCRVFY_MODELS", raising=False)
    monkeypatch.delenv("CAOCRVFY_CACHE", raising=False)
    monkeypatch.setattr(locations, "checkout_root", lambda: None)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shipped = tmp_path / "env" / "share" / "caocrvfy" / "models"
    (shipped / "captcha-6x62").mkdir(parents=True)
    assert locations.default_model() == shipped / "captcha-6x62"
    assert locations.cache_dir() == tmp_path / "xdg" / "caocrvfy"


def test_the_default_reader_is_the_int8_file_beside_the_default_model_else_its_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CAOCRVFY_MODELS", str(tmp_path))
    folder = tmp_path / locations.DEFAULT_MODEL_NAME
    folder.mkdir()
    assert locations.default_reader() == folder
    (folder / locations.DEFAULT_READER_FILE).write_bytes(b"")
    assert locations.default_reader() == folder / locations.DEFAULT_READER_FILE
    assert locations.default_model() == folder  # export, --init and --teacher keep the Keras model


def test_the_checkout_ships_the_default_reader():
    assert locations.default_reader().name == locations.DEFAULT_READER_FILE


def test_a_missing_default_model_names_the_variable_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv("CAOCRVFY_MODELS", str(tmp_path))
    with pytest.raises(DataError, match="set CAOCRVFY_MODELS"):
        locations.resolve_model_path(None)


def test_a_run_folder_resolves_to_its_model_and_config(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"")
    with pytest.raises(DataError, match="config.json is missing"):
        locations.resolve_model_path(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert locations.resolve_model_path(tmp_path) == (tmp_path / "model.keras", tmp_path / "config.json")
    assert locations.resolve_model_path(str(tmp_path / "model.keras"))[0] == Path(tmp_path / "model.keras")
