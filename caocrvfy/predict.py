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


def ctc_collapse(path: np.ndarray) -> np.ndarray:
    """What a CTC path reads: repeats merged, blanks (0) dropped."""
    return path[(path != 0) & np.concatenate([[True], path[1:] != path[:-1]])]


def ctc_label_probability(probs: np.ndarray, label: np.ndarray) -> float:
    """P(label | image) under CTC: the sum over every alignment of `label` (1-based class
    indices, blank 0) of the product of its per-step probabilities (the forward algorithm,
    rescaled at each step). `probs` is one image's (steps, blank + classes) softmax output."""
    extended = np.zeros(2 * len(label) + 1, np.int64)
    extended[1::2] = label
    # A step may skip the blank between two different characters.
    skip = np.zeros(len(extended), bool)
    skip[3::2] = extended[3::2] != extended[1:-2:2]
    alpha = np.zeros(len(extended))
    alpha[0] = probs[0, 0]
    if len(extended) > 1:
        alpha[1] = probs[0, extended[1]]
    log_scale = 0.0
    for t in range(1, len(probs)):
        moved = alpha.copy()
        moved[1:] += alpha[:-1]
        moved[2:] += np.where(skip[2:], alpha[:-2], 0.0)
        alpha = moved * probs[t, extended]
        total = alpha.sum()
        if total <= 0:
            return 0.0
        alpha /= total
        log_scale += np.log(total)
    return float(np.exp(log_scale + np.log(max(alpha[-2:].sum() if len(alpha) > 1 else alpha[-1], 1e-300))))


def ctc_best_path_of_length(probs: np.ndarray, length: int) -> np.ndarray | None:
    """The most probable CTC path that reads exactly `length` characters (Viterbi over the
    number of characters read so far and the last symbol); its 1-based classes, or None when
    the output has too few steps."""
    steps, symbols = probs.shape
    logp = np.log(np.clip(probs, 1e-30, 1.0))
    # score[k, s]: best log probability of a path prefix that has read k characters and whose
    # last symbol is s (0 = blank); back[t, k, s] = (k, s) it came from.
    score = np.full((length + 1, symbols), -np.inf)
    score[0, 0] = logp[0, 0]
    if length:
        score[1, 1:] = logp[0, 1:]
    back = np.zeros((steps, length + 1, symbols, 2), np.int64)
    for t in range(1, steps):
        new = np.full_like(score, -np.inf)
        # A blank keeps the count: from any symbol.
        from_any = score.argmax(1)
        new[:, 0] = score[np.arange(length + 1), from_any] + logp[t, 0]
        back[t, :, 0, 0], back[t, :, 0, 1] = np.arange(length + 1), from_any
        # Repeating the last character keeps the count.
        stay = score[:, 1:] + logp[t, 1:]
        new[:, 1:] = stay
        back[t, :, 1:, 0] = np.arange(length + 1)[:, None]
        back[t, :, 1:, 1] = np.arange(1, symbols)[None, :]
        # A new character (after a blank or a different character) adds one. The best symbol
        # to come from is the best of the others: the first best, or for that very character
        # the second best (both as argmax picks them, first index on ties).
        prev = score[:-1]
        rows = np.arange(length)
        first = prev.argmax(1)
        masked = prev.copy()
        masked[rows, first] = -np.inf
        second = masked.argmax(1)
        chars = np.arange(1, symbols)
        best_prev = np.where(chars[None, :] == first[:, None], second[:, None], first[:, None])
        moved = prev[rows[:, None], best_prev] + logp[t, 1:][None, :]
        better = moved > new[1:, 1:]
        new[1:, 1:] = np.where(better, moved, new[1:, 1:])
        back[t, 1:, 1:, 0] = np.where(better, rows[:, None], back[t, 1:, 1:, 0])
        back[t, 1:, 1:, 1] = np.where(better, best_prev, back[t, 1:, 1:, 1])
        score = new
    if not np.isfinite(score[length]).any():
        return None
    k, s = length, int(score[length].argmax())
    path = [s]
    for t in range(steps - 1, 0, -1):
        k, s = back[t, k, s]
        path.append(int(s))
    return ctc_collapse(np.array(path[::-1]))


def decode_outputs(outputs: np.ndarray, head: str, charset: str, length: int | None = None) -> list[Prediction]:
    """Turns raw model outputs into strings with a confidence: for CTC, the probability of the
    read string summed over all its alignments (`ctc_label_probability`); for the per-position
    heads, the product of the chosen class probabilities. `length`: every string has exactly
    this many characters (a fixed-length model), so a CTC read of another length is replaced by
    the best path of that length."""
    outputs = np.asarray(outputs, dtype=np.float32)
    best = outputs.argmax(-1)
    if head == "ctc":
        results = []
        for row, probs in zip(best, outputs):
            label = ctc_collapse(row)
            if length and len(label) != length:
                fitted = ctc_best_path_of_length(probs, length)
                label = label if fitted is None else fitted
            confidence = min(1.0, ctc_label_probability(probs.astype(np.float64), label))
            results.append(Prediction(decode_indices(label, charset), confidence))
        return results
    chosen = np.take_along_axis(outputs, best[..., None], -1)[..., 0]
    if head == "sigmoid":  # independent units: normalise each position to a distribution
        chosen = chosen / np.maximum(outputs.sum(-1), 1e-12)
    confidence = np.exp(np.log(np.clip(chosen, 1e-12, 1.0)).sum(-1))
    return [Prediction(decode_indices(row + 1, charset), float(conf)) for row, conf in zip(best, confidence)]


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


PREDICT_BATCH = 256  # images per model call


def jax_backend() -> bool:
    import keras

    return keras.backend.backend() == "jax"


def bucket(n: int) -> int:
    """The batch size a batch of `n` is padded to on JAX: the next power of two."""
    return 1 << max(0, n - 1).bit_length()


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
        # Every training label had this many characters: CTC reads are held to it.
        self.length: int | None = resolved.get("max_length") if resolved.get("fixed_length") else None

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
        from caocrvfy.model_enhanced import allow_jit_on_jax

        allow_jit_on_jax(model)  # an augmented model would otherwise predict op by op on JAX
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

    def predict_arrays(self, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> list[Prediction]:
        return self.decode(self.outputs(images, batch_size))

    def outputs(self, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
        """The model's raw outputs for a uint8 batch (what `decode` turns into text)."""
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            if hasattr(self.model, "predict_on_batch"):
                n = len(batch)
                if jax_backend():  # JAX compiles once per batch shape: pad to a power of two
                    batch = np.concatenate([batch, np.zeros((bucket(n) - n, *batch.shape[1:]), batch.dtype)])
                outputs.append(np.asarray(self.model.predict_on_batch(batch))[:n])
            else:
                outputs.append(np.asarray(self.model(batch)))
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

    def decode(self, outputs: np.ndarray) -> list[Prediction]:
        if not len(outputs):
            return []
        return decode_outputs(outputs, self.head, self.charset, self.length)

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
