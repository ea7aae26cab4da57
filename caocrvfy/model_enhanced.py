"""The captcha reader: a BatchNorm/Dropout CNN over the image and one of three output heads.

- `ctc`: per-column features, a BiGRU, softmax over blank + characters; reads any length.
- `softmax`: one softmax per character position (categorical focal loss).
- `sigmoid`: the seed's multi-label form, length x charset sigmoid units (BinaryFocalLoss).

The fixed-length heads read per-position features: a learned linear map from image columns
to string positions, so each position sees its own part of the image.
"""

from __future__ import annotations

import keras
from keras import layers

from caocrvfy.focal_loss import BinaryFocalLoss
from caocrvfy.losses import FocalCTCLoss, PositionLoss, parse_loss, term_metrics
from caocrvfy.metrics import HEADS, metrics_for

DEFAULT_LEARNING_RATE = 0.0012


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


def build_model(
    input_shape: tuple[int, int, int] = (60, 160, 1),
    num_classes: int = 62,
    max_length: int = 6,
    head: str = "ctc",
    filters: tuple[int, ...] = (16, 48, 64, 96),
    dense_units: int = 192,
    rnn_units: int = 96,
    sequence: str = "gru",
    stem: str = "conv",
    column_stride: int = 8,
    attention: bool = True,
    augment: bool = False,
    conv_dropout: float = 0.2,
    head_dropout: float = 0.4,
) -> keras.Model:
    """Builds the reader. Input: uint8 images (height, width, channels); scaling is inside.

    A stride-2 stem and a 2x2 pooling leave width / 4 columns; with `column_stride=8` the
    first stage pools 2x2 as well, leaving width / 8 (half the work after it). Later stages
    pool height only, down to 2 or 3 rows. The columns are the CTC time steps. Output:
    (batch, width / column_stride, num_classes + 1) for `ctc`, (batch, max_length, num_classes)
    otherwise.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    if column_stride not in (4, 8):
        raise ValueError(f"column_stride must be 4 or 8, not {column_stride!r}")
    height, width, _ = input_shape
    steps = -(-width // column_stride)
    if head == "ctc" and steps < 2 * max_length + 1:
        raise ValueError(f"width {width} gives {steps} CTC steps, too few for {max_length} characters; "
                         f"use a width of at least {column_stride * (2 * max_length + 1)}"
                         f"{' or a column stride of 4' if column_stride == 8 else ''}.")
    inputs = keras.Input(input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255, name="scale")(inputs)
    if augment:
        x = _augmentation(x)
    if stem == "patch":  # 4x4 patches to channels: cheap on a CPU, no full-size activations
        x = layers.Conv2D(filters[0], 4, strides=4, padding="same", use_bias=False, name="stem_conv")(x)
        x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    else:
        x = _conv_block(x, filters[0], strides=2, name="stem")
        x = layers.MaxPooling2D(2, padding="same", name="stem_pool")(x)
    for i, f in enumerate(filters[1:], start=1):
        x = _conv_block(x, f, name=f"stage{i}")
        if x.shape[1] >= 4:
            pool = (2, 2) if i == 1 and column_stride == 8 else (2, 1)
            x = layers.MaxPooling2D(pool, padding="same", name=f"stage{i}_pool")(x)
    if attention:
        x = _channel_attention(x)
    x = layers.Dropout(conv_dropout, name="conv_dropout")(x)
    # Columns become time steps: (batch, h, w, c) -> (batch, w, h * c).
    _, h, w, c = x.shape
    x = layers.Permute((2, 1, 3), name="columns")(x)
    x = layers.Reshape((w, h * c), name="column_features")(x)
    x = layers.Dense(dense_units, activation="relu", name="features")(x)
    if head == "ctc":
        x = layers.Dropout(conv_dropout, name="features_dropout")(x)
        if sequence == "gru":
            x = layers.Bidirectional(layers.GRU(rnn_units, return_sequences=True), name="bigru")(x)
        else:  # two 1-D convolutions over columns: no recurrence, fast on a CPU
            for i in range(2):
                x = layers.Conv1D(2 * rnn_units, 3, padding="same", activation="relu", name=f"seq_conv{i}")(x)
        x = layers.Dropout(head_dropout, name="head_dropout")(x)
        outputs = layers.Dense(num_classes + 1, activation="softmax", dtype="float32", name="ctc_output")(x)
    else:
        # (batch, columns, features) -> (batch, positions, features) by a learned column mix.
        x = layers.Permute((2, 1), name="to_channels_first")(x)
        x = layers.Dense(max_length, name="positions")(x)
        x = layers.Permute((2, 1), name="to_positions")(x)
        x = layers.Dense(dense_units, activation="relu", name="position_features")(x)
        x = layers.Dropout(head_dropout, name="head_dropout")(x)
        outputs = layers.Dense(num_classes, activation=head, dtype="float32", name=f"{head}_output")(x)
    return keras.Model(inputs, outputs, name=f"caocrvfy_{head}")


def model_head(model: keras.Model) -> str:
    """Which head a built or loaded model has, read from its output layer's name."""
    name = model.layers[-1].name
    for head in HEADS:
        if name == f"{head}_output":
            return head
    raise ValueError(f"{model.name} has no caocrvfy output layer (last layer: {name}).")


def make_loss(head: str, use_focal_loss: bool = True, focal_gamma: float = 2.0, focal_alpha: float = 0.25,
              label_smoothing: float = 0.0, loss: str = "focal", loss_weights=None, class_weights=None,
              tversky_alpha: float = 0.7, tversky_beta: float = 0.3) -> keras.losses.Loss:
    """The head's loss. `loss` names terms joined by '+' (focal, ce, dice, tversky) with
    `loss_weights`; `use_focal_loss=False` turns `focal` into `ce`. One plain term gives the
    product's own classes (BinaryFocalLoss, Keras's categorical focal, FocalCTCLoss); sums,
    Dice/Tversky and class weights give a `PositionLoss`."""
    terms, weights = parse_loss(loss, loss_weights)
    if not use_focal_loss:
        terms = tuple("ce" if t == "focal" else t for t in terms)
    if head == "ctc":
        if len(terms) > 1 or terms[0] not in ("focal", "ce") or class_weights is not None:
            raise ValueError(f"the CTC head takes the loss 'focal' or 'ce', not {loss!r} or class weights: "
                             "Dice, Tversky and class weights need per-position outputs (--head softmax or sigmoid)")
        return FocalCTCLoss(gamma=focal_gamma if terms[0] == "focal" else 0.0, alpha=weights[0])
    if len(terms) == 1 and weights == (1.0,) and class_weights is None and terms[0] in ("focal", "ce"):
        if head == "softmax" and terms[0] == "focal":
            return keras.losses.CategoricalFocalCrossentropy(alpha=focal_alpha, gamma=focal_gamma,
                                                             label_smoothing=label_smoothing)
        if head == "softmax":
            return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        if terms[0] == "focal":
            return BinaryFocalLoss(gamma=focal_gamma, alpha=focal_alpha, label_smoothing=label_smoothing)
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    return PositionLoss(head, terms, weights, focal_gamma, focal_alpha, label_smoothing, tversky_alpha,
                        tversky_beta, class_weights)


def compile_model(
    model: keras.Model,
    learning_rate: float | None = None,
    use_focal_loss: bool = True,
    focal_gamma: float = 2.0,
    focal_alpha: float = 0.25,
    label_smoothing: float = 0.0,
    jit_compile: bool | str = "auto",
    steps_per_execution: int = 1,
    **loss_options,
) -> keras.Model:
    """Adam (initial rate 0.0012) and the head's loss: BinaryFocalLoss for sigmoid, categorical
    focal for softmax, focal-weighted CTC for ctc; cross-entropy when `use_focal_loss` is off.
    `loss_options` go to `make_loss` (loss, loss_weights, class_weights, tversky_alpha/beta);
    a loss of several terms adds one `<term>_term` metric per term."""
    head = model_head(model)
    allow_jit_on_jax(model)
    loss = make_loss(head, use_focal_loss, focal_gamma, focal_alpha, label_smoothing, **loss_options)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate or DEFAULT_LEARNING_RATE),
        loss=loss,
        metrics=metrics_for(head) + (term_metrics(loss) if isinstance(loss, PositionLoss) else []),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def allow_jit_on_jax(model: keras.Model) -> None:
    """Keras marks its geometric augmentation layers as not jit-compatible because XLA on
    TensorFlow lacks their transform op; on JAX they are plain jax.numpy, and without jit the
    whole training step would run op by op, many times slower. Call before compiling (or, for
    a model loaded compiled, then set `model.jit_compile = True`)."""
    if keras.backend.backend() == "jax":
        for layer in model.layers:
            if isinstance(layer, AUGMENTATION_LAYERS):
                layer.supports_jit = True
