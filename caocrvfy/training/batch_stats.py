"""BatchNorm statistics recomputed from clean training images before each validation.

A BatchNorm layer reads at inference with moving averages of the batch statistics it saw in
training, about the last 100 steps at Keras's momentum 0.99. While the weights still move,
those averages describe layers that no longer exist: on captcha-images-v2 (832 labels, the
base as start) the model read 65.9% of the test files after its second epoch with them and
98.1% with statistics recomputed from 256 training images, through the same weights
(benchmarks/stability.py, docs/notes/2026-12-03-stability.md). `PreciseBatchNorm` recomputes
them before every validation, so that the epoch chosen, the pseudo-labels read after it and
the saved model all use statistics of the weights they have ("precise BN", Wu and Johnson,
"Rethinking 'Batch' in BatchNorm", 2021).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from caocrvfy.model_enhanced import AUGMENTATION_LAYERS

NOISE_LAYERS = (*AUGMENTATION_LAYERS, keras.layers.RandomContrast, keras.layers.Dropout)
STAT_IMAGES = 256  # images the statistics are recomputed from (4 batches of STAT_BATCH)
STAT_BATCH = 64


def batch_norm_layers(model: keras.Model) -> list:
    """The BatchNorm layers of `model` and of the models nested in it."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(batch_norm_layers(layer))
    return found


def without_layers(model: keras.Model, kinds: tuple = NOISE_LAYERS) -> keras.Model:
    """The model's graph with the layers of `kinds` left out (their input passed on), every other
    layer and its weights shared with `model`."""
    def call(layer, *args, **kwargs):
        return args[0] if isinstance(layer, kinds) else layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def recompute_statistics(model: keras.Model, images: np.ndarray, batch_size: int = STAT_BATCH) -> None:
    """Sets every BatchNorm layer's moving mean and variance to the mean over batches of `images`
    of its batch statistics (the model in training mode: give it `without_layers`' view)."""
    layers = batch_norm_layers(model)
    saved = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, len(images), batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1)  # batch k weighs 1/(k+1): the cumulative mean
            model(images[start:start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum


class PreciseBatchNorm(keras.callbacks.Callback):
    """Before each validation in fit (each follows an epoch of training), recomputes the model's
    BatchNorm statistics from `images()` (clean training images: no augmentation, no dropout)."""

    def __init__(self, images: Callable[[], np.ndarray]):
        super().__init__()
        self.images = images

    def on_train_begin(self, logs=None):
        self._view = without_layers(self.model)

    def on_test_begin(self, logs=None):
        recompute_statistics(self._view, self.images())
