"""The model's readings of the images still to label, and which model makes them: by default the
last one the page trained on this folder, else the shipped base reader."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from caocrvfy.inference import Predictor
from caocrvfy.labelling.store import STATE_DIR
from caocrvfy.locations import base_model

log = logging.getLogger(__name__)

RUNS = "runs"  # under the folder's STATE_DIR: one run folder per "train now"


@dataclass(frozen=True)
class Suggestion:
    text: str
    confidence: float


def runs_of(root: Path) -> Path:
    return Path(root) / STATE_DIR / RUNS


def latest_model(root: Path) -> Path:
    """The newest finished run the page trained on `root` (a run folder with model.keras and
    metrics.json), else the base reader."""
    finished = [run for run in runs_of(root).glob("*") if (run / "model.keras").is_file()
                and (run / "metrics.json").is_file()] if runs_of(root).is_dir() else []
    return max(finished, key=lambda run: (run / "metrics.json").stat().st_mtime) if finished else base_model()


def model_name(predictor: Predictor) -> str:
    """A short name for the page: the run or model folder."""
    path = predictor.path
    return path.parent.name if path is not None and path.name == "model.keras" else str(path)


class Suggester:
    """Reads images with one model; the page swaps in a new Suggester when a training ends."""

    def __init__(self, model: str | Path):
        self.predictor = Predictor.load(model)
        self.name = model_name(self.predictor)

    def read(self, paths: dict[str, Path]) -> tuple[dict[str, Suggestion], list[tuple[str, str]]]:
        """Suggestions by file name, and (file, reason) for the files that cannot be decoded."""
        found, failed = {}, []
        names = {path: name for name, path in paths.items()}
        for path, prediction, error in self.predictor.predict_files(list(paths.values())):
            if error:
                failed.append((names[path], f"{error}; not shown"))
            else:
                found[names[path]] = Suggestion(prediction.text, float(prediction.confidence))
        return found, failed


def least_sure_first(suggestions: dict[str, Suggestion]) -> list[str]:
    """File names ordered by the model's confidence, lowest first: each label then teaches the most."""
    return sorted(suggestions, key=lambda name: (suggestions[name].confidence, name))
