"""Run exported readers (ONNX, TFLite, SavedModel) behind the interface `Predictor` uses.

    from caocrvfy.inference import Predictor
    Predictor.load("exports/model.onnx").predict(["a.png"])   # config.json beside the file

Each runtime has `predict_on_batch(uint8 NHWC batch) -> numpy outputs`, the same outputs the
.keras model gives. `caocrvfy.inference.export` writes these files; it documents their input.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from caocrvfy.errors import DataError

log = logging.getLogger(__name__)

SUFFIXES = (".onnx", ".tflite")


class OnnxRuntime:
    """An onnxruntime session; `metadata` is the caocrvfy.* metadata_props of the file."""

    format = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DataError(f"{path} needs onnxruntime to run: pip install 'caocrvfy[export]'.") from exc
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DataError(f"{path} is not an ONNX model onnxruntime can load ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0]}); export it again with `caocrvfy export`.") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        # Free dimensions are names (str); the classes, and the steps or positions, are numbers.
        self.output_shape = tuple(self.session.get_outputs()[0].shape)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe.
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.uint8)})[0]


def _tflite_interpreter(path: Path, threads: int | None):
    """LiteRT's interpreter when installed; else TensorFlow's, which still ships in TF 2.21
    but warns that it is deprecated."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
        return Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)


class TFLiteRuntime:
    """TFLite interpreters, one for each batch size a batch is padded to (the next power of two):
    resizing one interpreter's input re-plans its memory and costs about as much as reading the
    batch, so batches of changing size (a server's) would pay it on nearly every call.

    Interpreters are not thread-safe, so calls are serialised by a lock. Each is made on its
    first batch size. The XNNPACK delegate's start-up line ("INFO: Created TensorFlow Lite
    XNNPACK delegate for CPU"), written once a process when the first interpreter is allocated,
    is caught while the file is opened.
    """

    format = "tflite"

    def __init__(self, path: Path, threads: int | None = None):
        self.path, self.threads = path, threads
        self._interpreters: dict[tuple, object] = {}
        from caocrvfy.startup import captured_native_stderr

        try:
            with captured_native_stderr():
                probe = self._make(None)
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"{path} is not a TFLite model ({str(exc).splitlines()[0]}); "
                            "export it again with `caocrvfy export`.") from exc
        self.input = probe.get_input_details()[0]
        self.output = probe.get_output_details()[0]
        self.output_shape = tuple(int(d) if d > 0 else None for d in self.output.get("shape_signature", self.output["shape"]))
        self.metadata: dict = {}
        self._lock = threading.Lock()

    def _make(self, shape: tuple | None):
        """An interpreter for batches of `shape` (None: the file's own input shape, not kept)."""
        interpreter = _tflite_interpreter(self.path, self.threads)
        if shape is not None:
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], shape, strict=False)
        interpreter.allocate_tensors()
        if shape is not None:
            self._interpreters[shape] = interpreter
        return interpreter

    @property
    def prepared_sizes(self) -> list[int]:
        """The batch sizes an interpreter is ready for."""
        return sorted({shape[0] for shape in self._interpreters})

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        from caocrvfy.inference.predictor import bucket

        batch = np.ascontiguousarray(batch, np.uint8)
        n = len(batch)
        shape = (bucket(n), *batch.shape[1:])
        if n < shape[0]:
            batch = np.concatenate([batch, np.zeros((shape[0] - n, *batch.shape[1:]), np.uint8)])
        with self._lock:
            interpreter = self._interpreters.get(shape) or self._make(shape)
            interpreter.set_tensor(self.input["index"], batch)
            interpreter.invoke()
            return interpreter.get_tensor(self.output["index"])[:n].copy()


class SavedModelRuntime:
    """The `serving_default` signature of a SavedModel folder written by `caocrvfy export`."""

    format = "savedmodel"

    def __init__(self, path: Path):
        import tensorflow as tf

        try:
            self.loaded = tf.saved_model.load(str(path))
            self.signature = self.loaded.signatures["serving_default"]
        except Exception as exc:
            raise DataError(f"{path} is not a SavedModel written by `caocrvfy export` "
                            f"({type(exc).__name__}); export it again.") from exc
        self.output_shape = tuple(self.signature.structured_outputs["outputs"].shape)
        config = getattr(self.loaded, "config_json", None)
        self.metadata = {"caocrvfy.config": config.numpy().decode()} if config is not None else {}

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.signature(images=np.asarray(batch, np.uint8))["outputs"].numpy()


def load_runtime(path: str | Path, threads: int | None = None):
    """Opens an exported model by its suffix (a folder with saved_model.pb is a SavedModel);
    raises DataError naming the file when it is none of these or cannot be loaded."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").exists():
        return SavedModelRuntime(path)
    if path.suffix == ".onnx":
        return OnnxRuntime(path, threads)
    if path.suffix == ".tflite":
        return TFLiteRuntime(path, threads)
    raise DataError(f"{path} is not a model file caocrvfy can run: give a .keras, .onnx or .tflite file "
                    "(from `caocrvfy export`) with its config.json beside it.")


def embedded_config(runtime) -> dict | None:
    """The config a runtime carries inside its file, if any (ONNX metadata, SavedModel)."""
    text = getattr(runtime, "metadata", {}).get("caocrvfy.config")
    return json.loads(text) if text else None
