"""Where training runs: the device, and several GPUs or machines together (tf.distribute).

MultiWorkerMirroredStrategy needs a patch of two Keras internals (see
`patch_keras_for_multi_worker`); it is applied to multi-worker runs only, and the Keras versions
it was tested with are named below.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

PATCHED_KERAS = ((3, 12), (3, 15))  # the Keras versions the multi-worker patch was tested with (major, minor)


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def on_gpu() -> bool:
    import keras

    return any(d.lower().startswith(("gpu", "cuda")) for d in keras.distribution.list_devices())


def describe_device() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"TensorFlow on {'GPU: ' + ', '.join(g.name for g in gpus) if gpus else 'CPU'}"
    if backend == "jax":
        import jax

        return f"JAX on {', '.join(str(d) for d in jax.devices())}"
    return f"{backend} backend"


def distribution_strategy():
    """(strategy, is_chief, worker index, what to log): MultiWorkerMirroredStrategy when
    TF_CONFIG names a cluster, MirroredStrategy when TensorFlow sees several GPUs, else
    (None, True, 0, None). Call it before TensorFlow runs anything else."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None, True, 0, None
    import tensorflow as tf

    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    if tf_config.get("cluster"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = tf_config.get("task", {})
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
        has_chief = "chief" in tf_config["cluster"]
        is_chief = kind == "chief" or (not has_chief and kind == "worker" and index == 0)
        return strategy, is_chief, index, (f"multi-worker training: {kind} {index} of {strategy.num_replicas_in_sync} "
                                           f"replicas{' (chief: writes the run folder)' if is_chief else ''}")
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        return strategy, True, 0, (f"training on {strategy.num_replicas_in_sync} GPUs (MirroredStrategy); "
                                   "--batch-size is the global batch")
    return None, True, 0, None


def patch_keras_for_multi_worker(model) -> None:
    """Works around two Keras 3.15 failures under MultiWorkerMirroredStrategy (TensorFlow
    backend), both "reduce across workers" calls that the strategy refuses:
    - `fit` builds the model from its first batch by `strategy.reduce(batch)`, and an (x, y)
      tuple cannot be reduced ("Attempt to convert a value (PerReplica...)"): build from this
      worker's own copy of the batch instead; only shapes and dtypes matter.
    - each step's logs are averaged with `strategy.reduce("MEAN", v, axis=0)`, and the logs
      are scalars ("Invalid reduction dimension 0"): average them across workers with axis=None.
    """
    import types

    import keras
    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    if not PATCHED_KERAS[0] <= _version(keras.__version__) <= PATCHED_KERAS[1]:
        log.warning(f"multi-worker training is tested with Keras {'.'.join(map(str, PATCHED_KERAS[0]))} to "
                    f"{'.'.join(map(str, PATCHED_KERAS[1]))}; this is Keras {keras.__version__}, whose internals "
                    "the patch below replaces may differ")
    model._maybe_symbolic_build = types.MethodType(build, model)
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica
