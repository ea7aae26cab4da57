"""The captcha reader: a BatchNorm/Dropout CNN over the image and one of three output heads.

- `ctc`: per-column features, a BiGRU, softmax over blank + characters; reads any length.
  With `merge_case`, a fixed `case_merge` layer after the softmax adds each letter's two cases.
- `softmax`: one softmax per character position (categorical focal loss).
- `sigmoid`: the seed's multi-label form, length x charset sigmoid units (BinaryFocalLoss).

The fixed-length heads read per-position features: a learned linear map from image columns
to string positions, so each position sees its own part of the image.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import layers

from caocrvfy.data.charset import output_columns
from caocrvfy.model_config import HEADS, ModelConfig

CASE_MERGE = "case_merge"  # the output layer's name with ModelConfig.merge_case


def _conv_block(x, filters: int, strides=1, name: str = ""):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _channel_attention(x, ratio: int = 8):
    """Squeeze-and-excitation: reweighs channels by a gate computed from their global means."""
    channels = x.shape[-1]
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="se_squeeze")(x)
    gate = layers.Dense(max(channels // ratio, 8), activation="relu", name="se_reduce")(gate)
    gate = layers.Dense(channels, activation="sigmoid", name="se_expand")(gate)
    return layers.Multiply(name="se_scale")([x, gate])


AUGMENTATION_LAYERS = (layers.RandomRotation, layers.RandomZoom, layers.RandomTranslation)


def _augmentation(x):
    """Active in training only: small rotation, scale, shift, contrast change and noise."""
    x = layers.RandomRotation(5 / 360, fill_mode="nearest", name="aug_rotate")(x)
    x = layers.RandomZoom(0.08, fill_mode="nearest", name="aug_zoom")(x)
    x = layers.RandomTranslation(0.04, 0.03, fill_mode="nearest", name="aug_shift")(x)
    x = layers.RandomContrast(0.3, name="aug_contrast")(x)
    return layers.GaussianNoise(0.03, name="aug_noise")(x)


def build_model(config: ModelConfig | None = None, **fields) -> keras.Model:
    """Builds the reader described by `config` with `fields` replaced (every `ModelConfig`
    field is a keyword: `build_model(charset="0123456789", max_length=4, width=128)`).
    Input: uint8 images (height, width, channels); scaling is inside.

    A stride-2 stem and a 2x2 pooling leave width / 4 columns; with `column_stride=8` the
    first stage pools 2x2 as well, leaving width / 8 (half the work after it). Later stages
    pool height only, down to 2 or 3 rows. The columns are the CTC time steps. Output:
    (batch, width / column_stride, num_classes + 1) for `ctc`, (batch, max_length, num_classes)
    otherwise.
    """
    cfg = dataclasses.replace(config or ModelConfig(), **fields).check("build_model")  # DataError, a ValueError
    filters, head = cfg.filters, cfg.head
    inputs = keras.Input(cfg.input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255, name="scale")(inputs)
    if cfg.augment:
        x = _augmentation(x)
    x = _conv_block(x, filters[0], strides=2, name="stem")
    x = layers.MaxPooling2D(2, padding="same", name="stem_pool")(x)
    for i, f in enumerate(filters[1:], start=1):
        x = _conv_block(x, f, name=f"stage{i}")
        if x.shape[1] >= 4:
            pool = (2, 2) if i == 1 and cfg.column_stride == 8 else (2, 1)
            x = layers.MaxPooling2D(pool, padding="same", name=f"stage{i}_pool")(x)
    if cfg.attention:
        x = _channel_attention(x)
    x = layers.Dropout(cfg.conv_dropout, name="conv_dropout")(x)
    # Columns become time steps: (batch, h, w, c) -> (batch, w, h * c).
    _, h, w, c = x.shape
    x = layers.Permute((2, 1, 3), name="columns")(x)
    x = layers.Reshape((w, h * c), name="column_features")(x)
    x = layers.Dense(cfg.dense_units, activation="relu", name="features")(x)
    if head == "ctc":
        x = layers.Dropout(cfg.conv_dropout, name="features_dropout")(x)
        x = layers.Bidirectional(layers.GRU(cfg.rnn_units, return_sequences=True), name="bigru")(x)
        x = layers.Dropout(cfg.head_dropout, name="head_dropout")(x)
        units = cfg.unit_charset
        outputs = layers.Dense(len(units) + 1, activation="softmax", dtype="float32", name="ctc_output")(x)
        if cfg.merge_case:
            merge = layers.Dense(cfg.num_classes + 1, use_bias=False, trainable=False, dtype="float32",
                                 name=CASE_MERGE)
            outputs = merge(outputs)
            merge.set_weights([case_merge_kernel(units, cfg.charset)])
    else:
        # (batch, columns, features) -> (batch, positions, features) by a learned column mix.
        x = layers.Permute((2, 1), name="to_channels_first")(x)
        x = layers.Dense(cfg.max_length, name="positions")(x)
        x = layers.Permute((2, 1), name="to_positions")(x)
        x = layers.Dense(cfg.dense_units, activation="relu", name="position_features")(x)
        x = layers.Dropout(cfg.head_dropout, name="head_dropout")(x)
        outputs = layers.Dense(cfg.num_classes, activation=head, dtype="float32", name=f"{head}_output")(x)
    return keras.Model(inputs, outputs, name=f"caocrvfy_{head}")


def case_merge_kernel(units: str, charset: str) -> np.ndarray:
    """The fixed (blank + units) x (blank + charset) 0/1 matrix that adds the probabilities of
    each unit into the charset character it is, or the other case of."""
    kernel = np.zeros((len(units) + 1, len(charset) + 1), "float32")
    for unit, column in enumerate(output_columns(charset, units)):
        if column is not None:
            kernel[unit, column] = 1.0
    return kernel


def load_saved_model(path, compile: bool = False) -> keras.Model:
    """A saved .keras reader, or one sentence naming the file and what is wrong with it: not a
    .keras archive (truncated or corrupt), code that Keras's safe mode refuses to run (a Lambda
    layer; caocrvfy never turns safe mode off), or not a model Keras can rebuild."""
    import zipfile

    from caocrvfy.errors import DataError

    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a .keras file (not a zip archive): it may be truncated or corrupt; "
                        "copy it again or give the model.keras written by `caocrvfy train`.")
    try:
        return keras.models.load_model(path, compile=compile)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "safe_mode" in str(exc) or "unsafe" in str(exc).lower():
            raise DataError(f"{path} holds Python code (such as a Lambda layer) that Keras's safe mode refuses to "
                            "load, and caocrvfy never runs it: use a model written by `caocrvfy train`.") from exc
        raise DataError(f"{path} is not a caocrvfy model Keras can load ({type(exc).__name__}: {first}); "
                        "give the model.keras written by `caocrvfy train`.") from exc


def model_head(model: keras.Model) -> str:
    """Which head a built or loaded model has, read from its output layer's name."""
    name = model.layers[-1].name
    if name == CASE_MERGE:
        return "ctc"
    for head in HEADS:
        if name == f"{head}_output":
            return head
    raise ValueError(f"{model.name} has no caocrvfy output layer (last layer: {name}).")


def allow_jit_on_jax(model: keras.Model) -> None:
    """Keras marks its geometric augmentation layers as not jit-compatible because XLA on
    TensorFlow lacks their transform op; on JAX they are plain jax.numpy, and without jit the
    whole training step would run op by op, many times slower. Call before compiling (or, for
    a model loaded compiled, then set `model.jit_compile = True`)."""
    if keras.backend.backend() == "jax":
        for layer in model.layers:
            if isinstance(layer, AUGMENTATION_LAYERS):
                layer.supports_jit = True
