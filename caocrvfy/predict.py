"""Read captchas with a trained model.

    from caocrvfy.predict import Predictor
    reader = Predictor.load("models/captcha-6x62")
    reader.predict(["a.png", "b.png"])   # [Prediction(text='x7Kq2m', confidence=0.998), ...]

The character set, length, head and input size come from the config.json saved beside the
model, never from constants here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caocrvfy.charset import decode_indices, fold_case
from caocrvfy.data import DataError, IMAGE_SUFFIXES, open_image

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "captcha-6x62"


@dataclass
class Prediction:
    text: str
    confidence: float


def decode_outputs(outputs: np.ndarray, head: str, charset: str) -> list[Prediction]:
    """Turns raw model outputs into strings; confidence is the probability of the read path
    (product of the chosen class probabilities over positions or CTC steps)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    best = outputs.argmax(-1)
    chosen = np.take_along_axis(outputs, best[..., None], -1)[..., 0]
    if head == "sigmoid":  # independent units: normalise each position to a distribution
        chosen = chosen / np.maximum(outputs.sum(-1), 1e-12)
    confidence = np.exp(np.log(np.clip(chosen, 1e-12, 1.0)).sum(-1))
    results = []
    for row, conf in zip(best, confidence):
        if head == "ctc":
            keep = (row != 0) & np.concatenate([[True], row[1:] != row[:-1]])
            text = decode_indices(row[keep], charset)
        else:
            text = decode_indices(row + 1, charset)
        results.append(Prediction(text, float(conf)))
    return results


def resolve_model_path(path: str | Path | None) -> tuple[Path, Path]:
    """Accepts a run folder, a model file beside config.json, or None for the shipped model."""
    path = Path(path) if path else DEFAULT_MODEL
    if path.is_dir():
        candidates = [path / n for n in ("model.keras", "model.onnx", "model.tflite")]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise DataError(f"{path} holds no model.keras: give a run folder or a model file.")
        path = found
    if not path.exists():
        raise DataError(f"{path} does not exist: give a run folder or a model file.")
    config = path.with_name("config.json")
    if not config.exists():
        raise DataError(f"{config} is missing: a model needs the config.json it was saved with.")
    return path, config


class Predictor:
    """A loaded model with its character set and input size."""

    def __init__(self, model, config: dict, path: Path | None = None):
        self.model = model
        self.config = config
        self.path = path
        resolved = config["resolved"]
        self.charset: str = resolved["charset"]
        self.head: str = resolved["head"]
        self.height, self.width, self.channels = resolved["input_shape"]
        self.ignore_case: bool = config.get("ignore_case", False)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Predictor":
        model_path, config_path = resolve_model_path(path)
        config = json.loads(config_path.read_text())
        if model_path.suffix != ".keras":
            from caocrvfy.runtimes import load_runtime

            return cls(load_runtime(model_path), config, model_path)
        import keras

        import caocrvfy  # noqa: F401  (registers custom objects)

        try:
            model = keras.models.load_model(model_path, compile=False)
        except Exception as exc:
            raise DataError(f"{model_path} is not a caocrvfy model ({type(exc).__name__}: {exc}); "
                            "give the model.keras written by `caocrvfy train`.") from exc
        return cls(model, config, model_path)

    def prepare(self, image) -> np.ndarray:
        """Decodes a path, bytes, PIL image or array to the model's uint8 input."""
        if isinstance(image, np.ndarray) and image.shape == (self.height, self.width, self.channels):
            return image.astype(np.uint8)
        if hasattr(image, "save") and not isinstance(image, (str, Path, bytes)):
            import io

            buf = io.BytesIO()
            image.save(buf, format="PNG")
            image = buf.getvalue()
        return open_image(image, self.height, self.width, self.channels)

    def predict_arrays(self, images: np.ndarray, batch_size: int = 256) -> list[Prediction]:
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            if hasattr(self.model, "predict_on_batch"):
                outputs.append(np.asarray(self.model.predict_on_batch(batch)))
            else:
                outputs.append(np.asarray(self.model(batch)))
        if not outputs:
            return []
        return decode_outputs(np.concatenate(outputs), self.head, self.charset)

    def predict(self, images: list, batch_size: int = 256) -> list[Prediction]:
        """Reads each image; raises DataError naming the first one that cannot be decoded."""
        arrays = []
        for image in images:
            try:
                arrays.append(self.prepare(image))
            except Exception as exc:
                name = image if isinstance(image, (str, Path)) else type(image).__name__
                raise DataError(f"{name} cannot be read as an image ({exc}).") from exc
        return self.predict_arrays(np.stack(arrays) if arrays else np.zeros((0,)), batch_size)

    def predict_files(self, paths: list[Path], batch_size: int = 256):
        """Yields (path, Prediction or None, error or None) for every file, in batches; a file
        that cannot be decoded gets its error and the rest are still read."""
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            ok, arrays, errors = [], [], {}
            for path in chunk:
                try:
                    arrays.append(self.prepare(path))
                    ok.append(path)
                except Exception as exc:
                    errors[path] = f"cannot be read as an image ({type(exc).__name__}: {exc})"
            predictions = dict(zip(ok, self.predict_arrays(np.stack(arrays)) if arrays else []))
            for path in chunk:
                yield path, predictions.get(path), errors.get(path)


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given, and the image files inside any folder, sorted."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(p)
    return paths


def read_labelled_folder(predictor: Predictor, folder: str | Path, ignore_case: bool = False,
                         batch_size: int = 256, progress: bool = False):
    """Reads a labelled folder (labels as `read_folder`): (truth, prediction, confidence) records,
    their image paths, and the skipped items with reasons. Case-folded when asked or when the
    model was trained with --ignore-case."""
    from caocrvfy.data import Progress, read_folder

    found = read_folder(folder, charset=None, ignore_case=ignore_case)
    fold = fold_case if ignore_case or predictor.ignore_case else (lambda s: s)
    label_of = dict(zip(found.paths, found.labels))
    records, paths, skipped = [], [], list(found.skipped)
    counter = Progress(len(found.paths), "read") if progress else None
    for path, prediction, error in predictor.predict_files(found.paths, batch_size=batch_size):
        if counter:
            counter.update(1)
        if error:
            skipped.append((path.name, error))
            continue
        records.append((fold(label_of[path]), fold(prediction.text), prediction.confidence))
        paths.append(path)
    if not records:
        raise DataError(f"{folder} has no readable labelled images to evaluate.")
    return records, paths, skipped


def evaluate_folder(predictor: Predictor, folder: str | Path, ignore_case: bool = False) -> dict:
    """Full-match and per-character accuracy on a labelled folder (labels as `read_folder`)."""
    records, _, skipped = read_labelled_folder(predictor, folder, ignore_case)
    full = sum(t == p for t, p, _ in records) / len(records)
    chars = sum(len(t) for t, _, _ in records)
    right = sum(sum(a == b for a, b in zip(t, p)) for t, p, _ in records)
    return {"full_match": full, "char_accuracy": right / chars, "count": len(records),
            "skipped": [{"file": n, "reason": r} for n, r in skipped]}
