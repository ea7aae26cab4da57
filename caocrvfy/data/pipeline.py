"""Input pipelines: tf.data on TensorFlow, `keras.utils.PyDataset` elsewhere (JAX on a GPU box)."""

from __future__ import annotations

import math
import threading

import keras
import numpy as np
from keras import ops

from caocrvfy.data.synthetic import SyntheticStream

def encode_targets(labels, head: str, num_classes: int):
    """Model targets from 1-based padded indices: as they are for CTC, one-hot otherwise."""
    if head == "ctc":
        return labels
    return ops.one_hot(ops.cast(labels, "int32") - 1, num_classes)


def _tf_backend() -> bool:
    return keras.backend.backend() == "tensorflow"


def make_dataset(images: np.ndarray, labels: np.ndarray, head: str, num_classes: int,
                 batch_size: int, shuffle: bool, seed: int = 0):
    """A tf.data pipeline (shuffle, batch, encode, prefetch) or, off TensorFlow, a PyDataset."""
    if _tf_backend():
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if shuffle:
            ds = ds.shuffle(min(len(images), 50_000), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
        ds = ds.map(lambda x, y: (x, encode_targets(y, head, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)
    return ArrayBatches(images, labels, head, num_classes, batch_size, shuffle, seed)


class ArrayBatches(keras.utils.PyDataset):
    """Batches from in-memory arrays for backends without tf.data."""

    def __init__(self, images, labels, head, num_classes, batch_size, shuffle, seed=0):
        super().__init__()
        self.images, self.labels = images, labels
        self.head, self.num_classes, self.batch_size = head, num_classes, batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(images))
        self.on_epoch_end()

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, i):
        idx = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        return self.images[idx], np.asarray(encode_targets(self.labels[idx], self.head, self.num_classes))

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)


class StreamBatches(keras.utils.PyDataset):
    """Random batches drawn from a `SyntheticStream` that is refilled while training runs, or
    from anything else with its `sample(rng, n)` (the `--unlabelled` pool of pseudo-labels).

    With `workers` > 1, that many threads prepare batches ahead of the training step (Keras's
    own enqueuer), so a fast device does not wait for the copy out of the ring buffer.
    """

    def __init__(self, stream: SyntheticStream, head: str, num_classes: int, batch_size: int, steps: int,
                 workers: int = 1):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(10, 2 * workers))
        self.stream, self.head, self.num_classes = stream, head, num_classes
        self.batch_size, self.steps = batch_size, steps
        self._local = threading.local()  # numpy Generators are not thread-safe: one per thread

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        rng = getattr(self._local, "rng", None)
        if rng is None:
            rng = self._local.rng = np.random.default_rng()
        x, y = self.stream.sample(rng, self.batch_size)
        return x, np.asarray(encode_targets(y, self.head, self.num_classes))
