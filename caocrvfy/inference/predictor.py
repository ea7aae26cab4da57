"""Read captchas with a trained model.

    from caocrvfy.inference import Predictor
    reader = Predictor.load("models/captcha-6x62")
    reader.predict(["a.png", "b.png"])   # [Prediction(text='x7Kq2m', confidence=0.998), ...]

The character set, length, head and input size come from the config.json saved beside the
model (its "model" section, a `ModelConfig`), never from constants here; so does the colour
key of a model trained with --keep-colour, which every image is masked to before it is read
(in Python, exports included: their graphs take pixels already decoded):

    Predictor.load("models/runs/red", keep_colour="blue")   # another key; None: no mask
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from caocrvfy.data.colour_keys import ColourKey, optional_key
from caocrvfy.data.images import IMAGE_SUFFIXES, open_image
from caocrvfy.errors import DataError
from caocrvfy.inference.decoding import Constraint, Prediction, decode_outputs
from caocrvfy.locations import default_reader, resolve_model_path
from caocrvfy.model_config import ModelConfig, migrate, model_config_of, read_config

log = logging.getLogger(__name__)

__all__ = ["Prediction", "Predictor", "expand_inputs"]

PREDICT_BATCH = 256  # images per model call
FROM_MODEL = "model"  # keep_colour: the key the model was trained with (its config's), if any


def jax_backend() -> bool:
    import keras

    return keras.backend.backend() == "jax"


def bucket(n: int) -> int:
    """The batch size a batch of `n` is padded to on JAX: the next power of two."""
    return 1 << max(0, n - 1).bit_length()


def output_shape(model) -> tuple | None:
    """The model's output shape (batch, steps or positions, classes), where it is known."""
    shape = getattr(model, "output_shape", None)
    return tuple(shape) if shape is not None else None


class Predictor:
    """A loaded model with its character set and input size."""

    def __init__(self, model, config: dict, path: Path | None = None,
                 keep_colour: ColourKey | str | None = FROM_MODEL):
        """`config`: a version-2 config.json as a dict (see `caocrvfy.model_config`);
        `keep_colour`: the colour images are masked to, as a key or its text; `FROM_MODEL` the
        model config's; None or "none" no mask."""
        self.model = model
        self.config = config = migrate(config, str(path or "the model config"))
        self.path = path
        self.model_config: ModelConfig = model_config_of(config, str(path or "the model config"))
        self.charset: str = self.model_config.charset
        self.head: str = self.model_config.head
        self.height, self.width, self.channels = self.model_config.input_shape
        self.ignore_case: bool = self.model_config.ignore_case
        self.keep_colour: ColourKey | None = optional_key(
            self.model_config.keep_colour if keep_colour == FROM_MODEL else keep_colour)
        # Every training label had this many characters: CTC reads are held to it.
        self.length: int | None = self.model_config.max_length if self.model_config.fixed_length else None
        shape = output_shape(model)
        if shape is not None:
            self.model_config.check_outputs(shape, f"{path.with_name('config.json') if path else 'the config'}",
                                            str(path or "the model"))

    @classmethod
    def load(cls, path: str | Path | None = None, keep_colour: ColourKey | str | None = FROM_MODEL) -> "Predictor":
        """The model of a run folder or file with its config.json (None: the shipped default reader,
        `locations.default_reader`); `keep_colour` as in `__init__`, checked before the model is loaded."""
        model_path, config_path = resolve_model_path(path or default_reader())
        config = read_config(config_path)
        if keep_colour != FROM_MODEL:
            keep_colour = optional_key(keep_colour)  # a bad colour fails before the slow part
        if model_path.suffix != ".keras":
            from caocrvfy.inference.runtimes import load_runtime

            return cls(load_runtime(model_path), config, model_path, keep_colour)
        from caocrvfy.model_enhanced import allow_jit_on_jax, load_saved_model

        model = load_saved_model(model_path)
        allow_jit_on_jax(model)  # an augmented model would otherwise predict op by op on JAX
        return cls(model, config, model_path, keep_colour)

    def prepare(self, image) -> np.ndarray:
        """Decodes a path, bytes, PIL image or array to the model's uint8 input, masked to the
        colour key if there is one; an array of the input's shape is taken as already prepared."""
        if isinstance(image, np.ndarray) and image.shape == (self.height, self.width, self.channels):
            return image.astype(np.uint8)
        if hasattr(image, "save") and not isinstance(image, (str, Path, bytes)):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            image = buf.getvalue()
        name = str(image) if isinstance(image, (str, Path)) else "an image"
        return open_image(image, self.height, self.width, self.channels, name=name, keep_colour=self.keep_colour)

    def predict_arrays(self, images: np.ndarray, batch_size: int = PREDICT_BATCH,
                       constraint: Constraint | None = None) -> list[Prediction]:
        return self.decode(self.outputs(images, batch_size), constraint)

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

    def check(self, constraint: Constraint) -> None:
        """DataError when this model cannot meet `constraint`: call it before any work (decoding
        checks again)."""
        constraint.check(self.charset, self.head, self.model_config.max_length)

    def decode(self, outputs: np.ndarray, constraint: Constraint | None = None) -> list[Prediction]:
        """Text and confidence from raw outputs; `constraint` holds each reading to a length
        range and a set of characters (see `Constraint`)."""
        if not len(outputs):
            return []
        return decode_outputs(outputs, self.head, self.charset, self.length, constraint)

    def predict(self, images: list, batch_size: int = PREDICT_BATCH,
                constraint: Constraint | None = None) -> list[Prediction]:
        """Reads each image; raises DataError naming the first one that cannot be decoded."""
        arrays = []
        for image in images:
            try:
                arrays.append(self.prepare(image))
            except Exception as exc:
                name = image if isinstance(image, (str, Path)) else type(image).__name__
                raise DataError(f"{name} cannot be read as an image ({exc}).") from exc
        return self.predict_arrays(np.stack(arrays) if arrays else np.zeros((0,)), batch_size, constraint)

    def predict_files(self, paths: list[Path], batch_size: int = PREDICT_BATCH, constraint: Constraint | None = None):
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
            predictions = dict(zip(ok, self.predict_arrays(np.stack(arrays), constraint=constraint) if arrays else []))
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
