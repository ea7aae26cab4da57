"""Where the shipped models and the synthetic-captcha cache live.

Both work from a source checkout and from an installed package, and an environment variable
overrides each:
- `CAOCRVFY_MODELS`: the folder holding the shipped models (`captcha-6x62`, ...). Default: the
  checkout's `models/`, else `share/caocrvfy/models` where pip installed them (pyproject.toml's
  data-files: under the environment's prefix, or the user base, or the --target folder).
- `CAOCRVFY_CACHE`: where `caocrvfy train` caches synthetic captchas (`--cache-dir` overrides
  it). Default: the checkout's `data/`, else `$XDG_CACHE_HOME/caocrvfy` (`~/.cache/caocrvfy`).
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

from caocrvfy.errors import DataError

DEFAULT_MODEL_NAME = "captcha-6x62"  # what `caocrvfy predict` reads without --model
# The default model's int8 TFLite form (`caocrvfy export --format tflite --int8`), beside its
# model.keras: what predict, evaluate and serve read without --model (BENCHMARKS.md, "Reading speed").
DEFAULT_READER_FILE = "model-int8.tflite"
BASE_MODEL_NAME = "base"  # where `caocrvfy train --data` starts without --init
_PACKAGE = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The source checkout the package runs from, or None for an installed package."""
    root = _PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "start_focal_training.py").is_file() else None


def models_dir() -> Path:
    """The first of: $CAOCRVFY_MODELS, the checkout's models/, and where pip puts the package's
    data files (the environment's prefix, the user's base with --user, beside the package with
    --target)."""
    if os.environ.get("CAOCRVFY_MODELS"):
        return Path(os.environ["CAOCRVFY_MODELS"])
    root = checkout_root()
    if root is not None and (root / "models").is_dir():
        return root / "models"
    installed = [Path(base) / "share" / "caocrvfy" / "models" for base in (sys.prefix, site.USER_BASE or "",
                                                                           _PACKAGE.parent) if base]
    return next((p for p in installed if p.is_dir()), installed[0])


def default_model() -> Path:
    """The shipped default model's folder: what export, --init and --teacher take without a
    path, and what `default_reader` is exported from."""
    return models_dir() / DEFAULT_MODEL_NAME


def default_reader() -> Path:
    """What predict, evaluate and serve read without --model: the default model's int8 TFLite
    file, or its folder (model.keras) where that file is missing."""
    reader = default_model() / DEFAULT_READER_FILE
    return reader if reader.exists() else default_model()


def base_model() -> Path:
    """The shipped base reader: pretrained on varied synthetic text, where `caocrvfy train
    --data` starts by default."""
    return models_dir() / BASE_MODEL_NAME


def runs_dir() -> Path:
    """Where a training without --out writes its run folder."""
    root = checkout_root()
    return (root if root is not None else Path.cwd()) / "models" / "runs"


def cache_dir() -> Path:
    if os.environ.get("CAOCRVFY_CACHE"):
        return Path(os.environ["CAOCRVFY_CACHE"])
    root = checkout_root()
    if root is not None:
        return root / "data"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "caocrvfy"


MODEL_FILES = ("model.keras", "model.onnx", "model.tflite")  # what a run or export folder may hold, first found wins


def resolve_model_path(path: str | Path | None) -> tuple[Path, Path]:
    """(model file, its config.json) for a run folder, a model file beside config.json, or
    None for the shipped default model."""
    path = Path(path) if path else default_model()
    if path.is_dir():
        found = next((path / n for n in MODEL_FILES if (path / n).exists()), None)
        if found is None:
            raise DataError(f"{path} holds no model.keras: give a run folder or a model file.")
        path = found
    if not path.exists():
        hint = " (set CAOCRVFY_MODELS to the folder of the shipped models)" if path.parent == models_dir() else ""
        raise DataError(f"{path} does not exist: give a run folder or a model file{hint}.")
    config = path.with_name("config.json")
    if not config.exists():
        raise DataError(f"{config} is missing: a model needs the config.json it was saved with.")
    return path, config
