"""Export a trained reader as a SavedModel, ONNX or TFLite file that needs no caocrvfy code.

    caocrvfy export --model models/captcha-6x62 --format onnx --out exports/model.onnx
    caocrvfy export --model models/captcha-6x62 --format tflite
    caocrvfy export --model models/captcha-6x62 --format tflite --int8 --out exports/int8.tflite
    caocrvfy export --model models/captcha-6x62 --format savedmodel --out exports/savedmodel

Every export takes a uint8 NHWC batch of any height and width (channels as the model's) and
resizes it inside to the model's input size (bilinear, `tf.image.resize`), then runs the model;
its output is the model's own: softmax (batch, steps, blank + characters) for the CTC head,
(batch, positions, characters) otherwise. A batch whose images already have the model's size
reads exactly as the .keras model does. The SavedModel has a second signature, `serve_bytes`,
that takes encoded images (PNG, JPEG, GIF, BMP) as a string batch and decodes them inside;
ONNX and TFLite have no image decoders among their operators, so their callers decode. The
TFLite file uses builtin operators only (the GRU is unrolled), so it needs no Flex delegate.

Pillow's BILINEAR (used by `caocrvfy predict`) widens its filter when it shrinks an image and
`tf.image.resize` without antialiasing does not, so an image much larger than the model's input
may read a little differently through the inner resize; resizing before the call avoids that.
The antialiased resize is not used because the ONNX and TFLite converters cannot convert it.

The decoding information travels with the export: config.json (and metrics.json) are copied
beside the exported file (inside the SavedModel folder), and the ONNX file also carries the
character set, head, input shape and the whole config in its metadata_props, and the
SavedModel the whole config as the variable `config_json`. TFLite keeps only the file beside.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from caocrvfy.errors import DataError
from caocrvfy.locations import resolve_model_path
from caocrvfy.model_config import model_config_of, read_config

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "onnx", "tflite")
DEFAULT_NAMES = {"savedmodel": "savedmodel", "onnx": "model.onnx", "tflite": "model.tflite"}
SIDECARS = ("config.json", "metrics.json")
ONNX_OPSET = 17
# Pillow's "L" conversion (ITU-R 601-2 luma) in its own fixed-point weights, so that the
# SavedModel's decoder makes the same grey levels as `caocrvfy.data.images.open_image`.
LUMA = (19595 / 65536, 38470 / 65536, 7471 / 65536)


def output_path(model_dir: Path, fmt: str, out: str | Path | None) -> Path:
    """Where the export goes: a .onnx/.tflite file or a SavedModel folder; a folder given for a
    file format gets model.onnx or model.tflite inside it."""
    if fmt not in FORMATS:
        raise DataError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    if out is None:
        return model_dir / DEFAULT_NAMES[fmt]
    out = Path(out)
    if fmt == "savedmodel":
        if out.is_file():
            raise DataError(f"{out} is a file: a SavedModel is a folder, give a folder path.")
        return out
    suffix = f".{fmt}"
    if out.suffix == suffix:
        return out
    if out.is_dir() or not out.suffix:
        return out / DEFAULT_NAMES[fmt]
    raise DataError(f"{out} does not end in {suffix}: name the file model{suffix} or give a folder.")


def unrolled(model):
    """The same model with every recurrent layer unrolled, weights shared by copy.

    A `tf.while_loop` over a batch of unknown size leaves a tensor list whose element shape is
    not static, which TFLite's builtin ops cannot hold; unrolled, the GRU is plain matrix ops.
    """

    def walk(item):
        if isinstance(item, dict):
            return {k: (True if k == "unroll" else walk(v)) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    config = model.get_config()
    flat = walk(config)
    if flat == config:
        return model
    copy = model.__class__.from_config(flat)
    copy.set_weights(model.get_weights())
    return copy


def resize_batch(images, height: int, width: int):
    """uint8 NHWC of any size -> uint8 (batch, height, width, channels), bilinear, rounded.

    The cast to float comes first: TFLite has a builtin bilinear resize for float32 only.
    """
    import tensorflow as tf

    x = tf.image.resize(tf.cast(images, tf.float32), (height, width), method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def decode_one(data, channels: int):
    """Encoded image bytes -> uint8 (h, w, channels) the way `open_image` does it: first
    frame, transparency composited on white, grey by Pillow's luma weights."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    x = tf.cast(image, tf.float32)
    n = tf.shape(x)[-1]
    color = tf.cond(n >= 3, lambda: x[..., :3], lambda: tf.tile(x[..., :1], [1, 1, 3]))
    alpha = tf.cond(tf.equal(n % 2, 0), lambda: x[..., -1:] / 255.0, lambda: tf.ones_like(x[..., :1]))
    rgb = color * alpha + 255.0 * (1.0 - alpha)
    if channels == 1:
        rgb = tf.reduce_sum(rgb * tf.constant(LUMA), axis=-1, keepdims=True)
    return tf.round(rgb)


def serving_functions(model, height: int, width: int, channels: int) -> dict:
    """`serve`: uint8 batch of any size; `serve_bytes`: encoded images; both return
    {"outputs": model output}."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")])
    def serve(images):
        return {"outputs": model(resize_batch(images, height, width), training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(image_bytes):
        def one(data):
            x = tf.image.resize(decode_one(data, channels), (height, width), method="bilinear")
            return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)

        images = tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))
        return {"outputs": model(images, training=False)}

    return {"serve": serve, "serve_bytes": serve_bytes}


def _export_savedmodel(model, config: dict, out: Path) -> None:
    import tensorflow as tf

    height, width, channels = model_config_of(config).input_shape
    functions = serving_functions(model, height, width, channels)
    module = tf.Module()
    module.model = model
    # A variable, unlike a constant, is saved with the module: loaded.config_json.numpy().
    module.config_json = tf.Variable(json.dumps(config), trainable=False, dtype=tf.string)
    module.serve, module.serve_bytes = functions["serve"], functions["serve_bytes"]
    tf.saved_model.save(module, str(out), signatures={
        "serving_default": functions["serve"].get_concrete_function(),
        "serve_bytes": functions["serve_bytes"].get_concrete_function(),
    })


def _export_onnx(model, config: dict, out: Path) -> None:
    try:
        import onnx
        import tf2onnx
    except ImportError as exc:
        raise DataError(f"ONNX export needs tf2onnx and onnx ({exc}): pip install 'caocrvfy[export]'.") from exc

    described = model_config_of(config)
    serve = serving_functions(model, *described.input_shape)["serve"]
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET)
    proto.doc_string = ("caocrvfy captcha reader: uint8 NHWC images of any size in, resized inside; "
                        f"{described.head} outputs; decode with the charset in metadata_props.")
    for key, value in {
        "caocrvfy.charset": described.charset,
        "caocrvfy.head": described.head,
        "caocrvfy.input_shape": json.dumps(list(described.input_shape)),
        "caocrvfy.max_length": str(described.max_length),
        "caocrvfy.config": json.dumps(config),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))


def tflite_converter(model, config: dict):
    """The TFLite converter of the `serve` function, weights frozen, no optimisation set."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    serve = serving_functions(unrolled(model), *model_config_of(config).input_shape)["serve"]
    # Frozen first: converted as they are, the weights of a loaded model stay resource variables
    # that the TFLite interpreter never initialises, and it reads NaN.
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen])


def _export_tflite(model, config: dict, out: Path, int8: bool = False) -> None:
    import tensorflow as tf

    converter = tflite_converter(model, config)
    if int8:  # dynamic range: int8 weights, activations quantised on the fly where a kernel takes them
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        tflite_bytes = converter.convert()
    except Exception as exc:  # the converter's own errors are long MLIR dumps
        raise DataError(f"the TFLite converter could not convert the {model_config_of(config).head} model: "
                        f"{str(exc).splitlines()[0]}") from exc
    out.write_bytes(tflite_bytes)


def _copy_sidecars(model_dir: Path, dest_dir: Path) -> None:
    """config.json must be new or the same (another model's would mislead whoever reads the export);
    metrics.json follows it."""
    source, dest = model_dir / "config.json", dest_dir / "config.json"
    if dest.exists() and dest.read_bytes() != source.read_bytes():
        raise DataError(f"{dest} belongs to another model: export into another folder.")
    if dest_dir.exists() and dest_dir.resolve() == model_dir.resolve():
        return
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name in SIDECARS:
        if (model_dir / name).exists():
            shutil.copyfile(model_dir / name, dest_dir / name)


def export_model(model: str | Path | None, fmt: str, out: str | Path | None = None, int8: bool = False) -> Path:
    """Exports a run folder's model.keras; returns the path of the .onnx/.tflite file or the
    SavedModel folder. config.json and metrics.json are copied beside it.

    `int8` (TFLite only) stores the weights as 8-bit integers (dynamic-range quantisation):
    a third of the size, and faster single images at the same accuracy (BENCHMARKS.md,
    "Integer quantisation"). ONNX Runtime's int8 and TFLite's full-integer form were measured
    too: less accurate and no faster, so they are not offered."""
    if int8 and fmt != "tflite":
        raise DataError(f"--int8 is for --format tflite only, and {fmt} is exported in float (ONNX Runtime's int8 "
                        "read less well and no faster: BENCHMARKS.md, Integer quantisation); give --format tflite "
                        "--int8, or drop --int8.")
    model_path, config_path = resolve_model_path(model)
    if model_path.suffix != ".keras":
        raise DataError(f"{model_path} is already an export: give the run folder or its model.keras.")
    config = read_config(config_path)
    target = output_path(model_path.parent, fmt, out)
    if fmt == "savedmodel" and target.exists() and any(target.iterdir()) and not (target / "saved_model.pb").exists():
        raise DataError(f"{target} is a folder with other files in it: give an empty or new folder.")
    sidecar_dir = target if fmt == "savedmodel" else target.parent
    _copy_sidecars(model_path.parent, sidecar_dir)  # first: refuses another model's folder before the slow part

    from caocrvfy.model_enhanced import load_saved_model

    loaded = load_saved_model(model_path)
    log.info(f"exporting {model_path} as {fmt} to {target}")
    if fmt == "savedmodel":
        _export_savedmodel(loaded, config, target)
    else:
        # Convert into a temporary name so that a failed conversion leaves no half-written file.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            partial = Path(tmp) / target.name
            if fmt == "onnx":
                _export_onnx(loaded, config, partial)
            else:
                _export_tflite(loaded, config, partial, int8)
            partial.replace(target)
    return target
