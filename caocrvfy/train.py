"""Train a captcha reader.

    python caocrvfy/train.py --train-size 20000 --time-limit 20      # synthetic 6 x 0-9a-zA-Z
    python caocrvfy/train.py --data path/to/labelled/folder          # your own captchas
    python caocrvfy/train.py --resume models/runs/20261123-031500    # carry on after a stop

Several GPUs are used together (tf.distribute.MirroredStrategy) when TensorFlow sees more than
one; several machines train together (MultiWorkerMirroredStrategy) when TF_CONFIG names a
cluster: start the same command on each, with its own task index (see README.md).

Writes model.keras (best by validation full-match), config.json, history.csv, curves.png and
metrics.json into --out (default: a new folder under models/runs/).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a plain script path: make the package importable
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parent.parent))

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("caocrvfy.train")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class TrainConfig:
    """Every training setting; saved, resolved, as config.json next to the model."""

    # data
    data: str | None = None
    charset: str | None = None
    length: int = 6
    width: int = 160
    height: int = 60
    channels: int = 1
    input_scale: float = 1.0
    train_size: int = 20_000
    val_size: int = 2_000
    val_fraction: float = 0.1
    ignore_case: bool = False
    cache_dir: str = str(PROJECT_ROOT / "data")
    no_cache: bool = False
    stream_workers: int = 0
    stream_capacity: int = 200_000
    steps_per_epoch: int = 0
    feed_threads: int = 1
    # model
    head: str = "ctc"
    filters: tuple[int, ...] = (16, 48, 64, 96)
    dense_units: int = 192
    rnn_units: int = 96
    sequence: str = "gru"
    stem: str = "conv"
    column_stride: int = 8
    attention: bool = True
    conv_dropout: float = 0.2
    head_dropout: float = 0.4
    augment: str = "auto"
    init: str | None = None
    # optimisation
    epochs: int = 150
    batch_size: int | None = None  # None: SMALL_BATCH for small labelled sets, else 64
    learning_rate: float = 0.0012
    warmup_epochs: float = 2.0
    use_focal_loss: bool = True
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    label_smoothing: float = 0.0
    loss: str = "focal"
    loss_weights: str | None = None
    class_weights: bool = False
    tversky_alpha: float = 0.7
    tversky_beta: float = 0.3
    schedule: str = "plateau"
    patience: int = 35
    plateau_patience: int = 8
    plateau_factor: float = 0.5
    min_learning_rate: float = 1e-6
    time_limit: float | None = None
    total_time_limit: float | None = None
    jit_compile: bool = False
    steps_per_execution: int = 0  # 0: GPU_STEPS_PER_EXECUTION on a GPU, else 1
    mixed_precision: bool = False
    seed: int = 0
    # output
    out: str | None = None
    resume: str | None = None
    # resolved at run time
    given: list = field(default_factory=list)  # architecture settings named on the command line: they win over --init's
    resolved: dict = field(default_factory=dict)


AUGMENT_BELOW = 5_000  # labelled images; below this augmentation is on unless switched off
SMALL_SET_BELOW, SMALL_BATCH, BATCH = 2_000, 16, 64  # labelled images; batch size below and above
GPU_STEPS_PER_EXECUTION = 8  # 1.59x the stream-fed rate on an H100 (benchmarks/gpu_feed.py)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="caocrvfy train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="folder of labelled images (default: synthetic captchas)")
    g.add_argument("--charset", help="characters, ranges allowed (default: 0-9a-zA-Z for synthetic, "
                                     "inferred from the labels for --data)")
    g.add_argument("--length", type=int, default=d.length, help=f"synthetic captcha length (default {d.length})")
    g.add_argument("--width", type=int, default=d.width, help=f"synthetic image width (default {d.width})")
    g.add_argument("--height", type=int, default=d.height,
                   help=f"image height (default {d.height}; for --data: 64, width from the images)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=d.channels,
                   help=f"1 grey or 3 colour (default {d.channels})")
    g.add_argument("--input-scale", type=float, default=d.input_scale,
                   help="the model reads images scaled by this (0.5: half the height and width, about twice as "
                        "fast to train on a CPU; use --column-stride 4 then); captchas are still drawn at "
                        "--width x --height (default 1)")
    g.add_argument("--train-size", type=int, default=d.train_size,
                   help=f"synthetic training images, cached under --cache-dir (default {d.train_size})")
    g.add_argument("--val-size", type=int, default=d.val_size,
                   help=f"synthetic validation images (default {d.val_size})")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help=f"share of --data held out, chosen by file name (default {d.val_fraction})")
    g.add_argument("--ignore-case", action="store_true", help="fold labels to lower case")
    g.add_argument("--cache-dir", default=d.cache_dir, help="where synthetic captchas are cached (default data/)")
    g.add_argument("--no-cache", action="store_true",
                   help="draw the synthetic captchas into memory instead of caching them as PNG files under "
                        "--cache-dir: no PNG encoding and reading back, nothing kept for the next run")
    g.add_argument("--stream-workers", type=int, default=d.stream_workers,
                   help="processes making fresh synthetic captchas during training instead of a cached set "
                        "(default 0: cached set)")
    g.add_argument("--stream-capacity", type=int, default=d.stream_capacity,
                   help=f"images kept in the streaming buffer (default {d.stream_capacity})")
    g.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                   help="batches per epoch when streaming (default: train-size / batch-size)")
    g.add_argument("--feed-threads", type=int, default=d.feed_threads,
                   help="threads preparing streamed batches ahead of training (default 1: more measured "
                        "no faster on an H100, benchmarks/gpu_feed.py)")
    g = p.add_argument_group("model")
    g.add_argument("--head", choices=("ctc", "softmax", "sigmoid"), default=d.head,
                   help=f"output head (default {d.head}; sigmoid is the seed's multi-label form)")
    g.add_argument("--filters", type=lambda s: tuple(int(v) for v in s.split(",")), default=d.filters,
                   help=f"convolution widths, comma-separated (default {','.join(map(str, d.filters))})")
    g.add_argument("--dense-units", type=int, default=d.dense_units, help=f"(default {d.dense_units})")
    g.add_argument("--rnn-units", type=int, default=d.rnn_units, help=f"(default {d.rnn_units})")
    g.add_argument("--sequence", choices=("gru", "conv"), default=d.sequence,
                   help=f"CTC sequence layer (default {d.sequence})")
    g.add_argument("--stem", choices=("conv", "patch"), default=d.stem, help=f"(default {d.stem})")
    g.add_argument("--column-stride", type=int, choices=(4, 8), default=d.column_stride,
                   help=f"image columns per CTC step (default {d.column_stride}; 8 halves the work after the "
                        "first stage)")
    g.add_argument("--no-attention", dest="attention", action="store_false",
                   help="drop the channel attention after the last convolution")
    g.add_argument("--conv-dropout", type=float, default=d.conv_dropout,
                   help=f"dropout after the convolutions and the column features (default {d.conv_dropout})")
    g.add_argument("--head-dropout", type=float, default=d.head_dropout,
                   help=f"dropout before the output layer (default {d.head_dropout})")
    g.add_argument("--augment", choices=("auto", "on", "off"), default=d.augment,
                   help=f"augmentation (default auto: on below {AUGMENT_BELOW} labelled training images)")
    g.add_argument("--init", help="start from this trained model (run folder or model.keras): its "
                                  "architecture is used (settings given here win, e.g. --column-stride 4 to finish a "
                                  "stride-8 model at stride 4) and its weights copied; the output layer is "
                                  "new when the number of characters differs")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"(default {d.epochs})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"(default {BATCH}; {SMALL_BATCH} for fewer than {SMALL_SET_BELOW} labelled training images, "
                        "which need more, smaller steps)")
    g.add_argument("--learning-rate", type=float, default=d.learning_rate, help=f"(default {d.learning_rate})")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help=f"(default {d.warmup_epochs})")
    g.add_argument("--no-focal-loss", dest="use_focal_loss", action="store_false",
                   help="cross-entropy (or plain CTC) instead of the focal loss")
    g.add_argument("--focal-gamma", type=float, default=d.focal_gamma, help=f"(default {d.focal_gamma})")
    g.add_argument("--focal-alpha", type=float, default=d.focal_alpha, help=f"(default {d.focal_alpha})")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="(default 0)")
    g.add_argument("--loss", default=d.loss,
                   help="loss terms joined by '+': focal, ce, dice (soft F1), tversky; for example focal+dice. "
                        "dice and tversky need --head softmax or sigmoid (default focal)")
    g.add_argument("--loss-weights", help="one weight per --loss term, comma-separated, e.g. 0.7,1.8 (default 1 each)")
    g.add_argument("--class-weights", action="store_true",
                   help="weigh each character's focal/ce loss by its inverse frequency in the training labels")
    g.add_argument("--tversky-alpha", type=float, default=d.tversky_alpha,
                   help=f"Tversky weight of missed characters (default {d.tversky_alpha})")
    g.add_argument("--tversky-beta", type=float, default=d.tversky_beta,
                   help=f"Tversky weight of spurious characters (default {d.tversky_beta})")
    g.add_argument("--schedule", choices=("plateau", "cosine"), default=d.schedule,
                   help="after warmup: ReduceLROnPlateau on validation loss, or cosine decay to the end of "
                        "--time-limit (or --epochs) (default plateau)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help=f"early-stopping patience in epochs (default {d.patience})")
    g.add_argument("--plateau-patience", type=int, default=d.plateau_patience,
                   help=f"epochs without validation-loss progress before the rate is cut (default {d.plateau_patience})")
    g.add_argument("--plateau-factor", type=float, default=d.plateau_factor, help=f"(default {d.plateau_factor})")
    g.add_argument("--time-limit", type=float,
                   help="stop cleanly after this many minutes of training (a resumed run counts its earlier ones), "
                        "keeping the best model")
    g.add_argument("--total-time-limit", type=float,
                   help="the whole run, drawing and loading the data included, ends within this many minutes: "
                        "training gets what is left (and a resumed run gets the budget anew)")
    g.add_argument("--jit-compile", action="store_true", help="XLA (slower on a 2-core CPU; see BENCHMARKS.md)")
    g.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU")
    g.add_argument("--steps-per-execution", type=int, default=d.steps_per_execution,
                   help=f"training steps per compiled call (default {GPU_STEPS_PER_EXECUTION} on a GPU, where it "
                        "cuts the per-step overhead (BENCHMARKS.md), else 1)")
    g.add_argument("--seed", type=int, default=d.seed, help="(default 0)")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="run folder (default: models/runs/<time>)")
    g.add_argument("--resume", help="run folder of an interrupted training to continue")
    return p


RANGES = {  # option: (lowest, highest, whether the lowest is allowed)
    "input_scale": (0.0, 4.0, False), "train_size": (1, None, True), "val_size": (1, None, True),
    "val_fraction": (0.0, 1.0, False), "stream_workers": (0, None, True), "stream_capacity": (1, None, True),
    "steps_per_epoch": (0, None, True), "feed_threads": (1, None, True), "dense_units": (1, None, True),
    "rnn_units": (1, None, True), "conv_dropout": (0.0, 0.95, True), "head_dropout": (0.0, 0.95, True),
    "epochs": (1, None, True), "batch_size": (1, None, True), "learning_rate": (0.0, None, False),
    "warmup_epochs": (0.0, None, True), "time_limit": (0.0, None, False), "total_time_limit": (0.0, None, False),
    "patience": (1, None, True), "plateau_patience": (1, None, True), "plateau_factor": (0.0, 1.0, False),
    "steps_per_execution": (0, None, True),
}


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One clear message for a setting out of range, before anything is drawn or built."""
    for name, (low, high, low_ok) in RANGES.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if value < low or (value == low and not low_ok) or (high is not None and value > high):
            bound = f"{'at least' if low_ok else 'above'} {low}" + (f" and at most {high}" if high is not None else "")
            parser.error(f"--{name.replace('_', '-')} must be {bound}, not {value}")
    if any(f <= 0 for f in args.filters):
        parser.error(f"--filters must be positive widths, not {','.join(map(str, args.filters))}")


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_ranges(parser, args)
    tokens = {t.partition("=")[0] for t in (argv if argv is not None else sys.argv[1:])}
    named = {a.dest for a in parser._actions if tokens & set(a.option_strings)}  # settings on the command line
    if args.resume:
        saved = json.loads((Path(args.resume) / "config.json").read_text())
        saved.pop("resolved", None)
        cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
        cfg.filters = tuple(cfg.filters)
        cfg.resume, cfg.out = args.resume, args.resume
        # The saved settings win, except the budget, which a user may extend when resuming.
        for name in ("epochs", "time_limit", "total_time_limit", "patience"):
            if name in named:
                setattr(cfg, name, getattr(args, name))
        return cfg
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    cfg.given = [name for name in ARCHITECTURE if name in named]
    return cfg


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


def _synthetic_cache(cfg: TrainConfig, spec, split: str) -> Path:
    key = hashlib.sha1(spec.charset.encode()).hexdigest()[:8]
    return Path(cfg.cache_dir) / f"synthetic-{spec.length}x{len(spec.charset)}-{spec.width}x{spec.height}-{key}" / split


def model_size(cfg: TrainConfig) -> tuple[int, int]:
    """The model's input (height, width): the images' size times --input-scale."""
    return max(1, round(cfg.height * cfg.input_scale)), max(1, round(cfg.width * cfg.input_scale))


def load_data(cfg: TrainConfig):
    """Returns (train, validation, charset, max_length, fixed_length, stream) with the arrays
    as (uint8 images, 1-based padded indices)."""
    from caocrvfy import data
    from caocrvfy.charset import encode_labels, parse_charset

    if cfg.data:
        charset = parse_charset(cfg.charset) if cfg.charset else None
        found = data.read_folder(cfg.data, charset=charset, ignore_case=cfg.ignore_case)
        if found.manifest and not cfg.resolved.get("input_shape"):
            cfg.height, cfg.width = found.manifest["height"], found.manifest["width"]
        elif not cfg.resolved.get("input_shape"):
            cfg.height, cfg.width = data.choose_input_size(found.paths, height=64)
        images, labels, paths = data.load_images(found, *model_size(cfg), cfg.channels)
        found.report_skipped()
        charset = cfg.resolved.get("charset") or found.charset
        max_length = cfg.resolved.get("max_length") or max(len(s) for s in labels)
        fixed = len({len(s) for s in labels}) == 1
        val = np.array([data.is_validation(p.name, cfg.val_fraction) for p in paths])
        if val.all() or not val.any():  # tiny folders: keep at least one image on each side
            val = np.zeros(len(paths), bool)
            val[:: max(2, int(round(1 / max(cfg.val_fraction, 1e-3))))] = True
        y = encode_labels(labels, charset, max_length)
        log.info(f"{cfg.data}: {len(paths)} images ({(~val).sum()} train, {val.sum()} validation), "
                 f"{len(found.skipped)} skipped, lengths {sorted({len(s) for s in labels})}, "
                 f"character set {charset!r}")
        return (images[~val], y[~val]), (images[val], y[val]), charset, max_length, fixed, None

    spec = data.CaptchaSpec(parse_charset(cfg.charset or "0-9a-zA-Z"), cfg.length, cfg.width, cfg.height)

    def cached(split: str, count: int):
        if cfg.no_cache:
            images, labels = data.draw_arrays(count, spec, cfg.channels, model_size(cfg))
            return images, encode_labels(labels, spec.charset, spec.length)
        folder = data.generate(_synthetic_cache(cfg, spec, split), count, spec)
        found = data.read_folder(folder, charset=spec.charset, length=spec.length)
        chosen = data.LabelledSet(found.root, found.paths[:count], found.labels[:count], spec.charset)
        images, labels, _ = data.load_images(chosen, *model_size(cfg), cfg.channels, dedupe=False)
        return images, encode_labels(labels, spec.charset, spec.length)

    validation = cached("val", cfg.val_size)
    if cfg.stream_workers:
        stream = data.SyntheticStream(spec, cfg.channels, cfg.stream_capacity, cfg.stream_workers,
                                      initial=min(cfg.train_size, cfg.stream_capacity), size=model_size(cfg))
        return None, validation, spec.charset, spec.length, True, stream
    return cached("train", cfg.train_size), validation, spec.charset, spec.length, True, None


def transfer_weights(source, target) -> int:
    """Copies weights layer by layer where names and shapes match; returns how many layers."""
    copied = 0
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        other = by_name.get(layer.name)
        if other is None or not layer.weights:
            continue
        mine, theirs = layer.get_weights(), other.get_weights()
        if len(mine) == len(theirs) and all(a.shape == b.shape for a, b in zip(mine, theirs)):
            layer.set_weights(theirs)
            copied += 1
    return copied


ARCHITECTURE = ("filters", "dense_units", "rnn_units", "sequence", "stem", "column_stride", "attention",
                "channels", "input_scale")
LEGACY_ARCHITECTURE = {"column_stride": 4, "input_scale": 1.0}  # what models saved before a setting existed were built with


def load_init(cfg: TrainConfig):
    """Loads the --init model and adopts its architecture, so that its weights fit; the output
    layer is kept only when the character count (and so its shape) is the same."""
    import keras

    from caocrvfy.data import DataError
    from caocrvfy.predict import resolve_model_path

    path, config_path = resolve_model_path(cfg.init)
    try:
        source = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise DataError(f"{cfg.init} is not a caocrvfy model ({type(exc).__name__}); give a run folder "
                        "or the model.keras written by `caocrvfy train`.") from exc
    saved = json.loads(config_path.read_text())
    for name in ARCHITECTURE:
        value = saved.get(name, LEGACY_ARCHITECTURE.get(name))
        if value is None:
            continue
        value = tuple(value) if name == "filters" else value
        if name in cfg.given and getattr(cfg, name) != value:
            log.info(f"{name}: {getattr(cfg, name)} as given, not {value} as in {cfg.init}; "
                     "the weights that fit are copied")
        else:
            setattr(cfg, name, value)
    return source


def class_weights_for(labels: np.ndarray, num_classes: int) -> list[float]:
    """Inverse character frequency in 1-based padded labels, clipped to [0.25, 4], mean 1."""
    counts = np.bincount(labels[labels > 0] - 1, minlength=num_classes).astype(np.float64)
    weights = np.clip(counts.mean() / np.maximum(counts, 1), 0.25, 4.0)
    return (weights / weights.mean()).round(4).tolist()


def loss_options(cfg: TrainConfig) -> dict:
    return dict(loss=cfg.loss, loss_weights=cfg.loss_weights, class_weights=cfg.resolved.get("class_weights"),
                tversky_alpha=cfg.tversky_alpha, tversky_beta=cfg.tversky_beta)


def distribution_strategy():
    """(strategy, is_chief, worker index): MultiWorkerMirroredStrategy when TF_CONFIG names a
    cluster, MirroredStrategy when TensorFlow sees several GPUs, else (None, True, 0)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None, True, 0
    import tensorflow as tf

    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    if tf_config.get("cluster"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = tf_config.get("task", {})
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
        has_chief = "chief" in tf_config["cluster"]
        is_chief = kind == "chief" or (not has_chief and kind == "worker" and index == 0)
        log.info(f"multi-worker training: {kind} {index} of {strategy.num_replicas_in_sync} replicas"
                 f"{' (chief: writes the run folder)' if is_chief else ''}")
        return strategy, is_chief, index
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        log.info(f"training on {strategy.num_replicas_in_sync} GPUs (MirroredStrategy); "
                 "--batch-size is the global batch")
        return strategy, True, 0
    return None, True, 0


def _patch_keras_for_multi_worker(model) -> None:
    """Works around two Keras 3.15 failures under MultiWorkerMirroredStrategy (TensorFlow
    backend), both "reduce across workers" calls that the strategy refuses:
    - `fit` builds the model from its first batch by `strategy.reduce(batch)`, and an (x, y)
      tuple cannot be reduced ("Attempt to convert a value (PerReplica...)"): build from this
      worker's own copy of the batch instead; only shapes and dtypes matter.
    - each step's logs are averaged with `strategy.reduce("MEAN", v, axis=0)`, and the logs
      are scalars ("Invalid reduction dimension 0"): average them across workers with axis=None.
    """
    import types

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

    model._maybe_symbolic_build = types.MethodType(build, model)
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica


FINISH_MINUTES = 0.75  # after the time limit: the cut epoch's validation, saving, the curves, the final scores


def training_minutes(cfg: TrainConfig, used: float) -> float | None:
    """The training time limit: --time-limit, cut to what --total-time-limit leaves after the
    `used` minutes of drawing, loading and building, less the time the run needs to finish."""
    from caocrvfy.data import DataError

    if not cfg.total_time_limit:
        return cfg.time_limit
    left = cfg.total_time_limit - used - FINISH_MINUTES
    if left <= 0:
        raise DataError(f"preparing the run took {used:.1f} of the {cfg.total_time_limit:g} minutes of "
                        "--total-time-limit, leaving none for training: give more minutes or a smaller --train-size.")
    log.info(f"{used:.1f} min used before training: training stops after {left:.1f} min "
             f"(--total-time-limit {cfg.total_time_limit:g})")
    return min(left, cfg.time_limit) if cfg.time_limit else left


def _model_for(cfg: TrainConfig, state: dict, run_dir: Path, input_shape, charset: str, max_length: int,
               head: str, augment: bool, init_source, jit):
    """The compiled model and the epoch to start from: the last checkpoint on --resume, else
    a new model (with --init's weights where they fit)."""
    import keras

    from caocrvfy.model_enhanced import allow_jit_on_jax, build_model, compile_model

    if state:
        log.info(f"resuming after epoch {state['epoch']} at learning rate {state['learning_rate']:.2e}")
        model = keras.models.load_model(run_dir / "last.keras")
        allow_jit_on_jax(model)
        model.jit_compile = jit
        model.steps_per_execution = cfg.resolved["steps_per_execution"]
        return model, state["epoch"]
    model = build_model(input_shape, len(charset), max_length, head, filters=tuple(cfg.filters),
                        dense_units=cfg.dense_units, rnn_units=cfg.rnn_units, sequence=cfg.sequence,
                        stem=cfg.stem, column_stride=cfg.column_stride, attention=cfg.attention,
                        augment=augment, conv_dropout=cfg.conv_dropout, head_dropout=cfg.head_dropout)
    if cfg.init:
        copied = transfer_weights(init_source, model)
        log.info(f"initialised {copied} of {sum(1 for l in model.layers if l.weights)} layers from {cfg.init}")
    compile_model(model, cfg.learning_rate, cfg.use_focal_loss, cfg.focal_gamma, cfg.focal_alpha,
                  cfg.label_smoothing, jit_compile=jit, steps_per_execution=cfg.resolved["steps_per_execution"],
                  **loss_options(cfg))
    return model, 0


def train(cfg: TrainConfig) -> Path:
    """Runs one training and returns the run folder."""
    import contextlib
    import shutil

    import keras

    import caocrvfy  # noqa: F401  (registers the custom objects for loading checkpoints)
    from caocrvfy import callbacks as cb
    from caocrvfy.data import DataError
    from caocrvfy.model_enhanced import compile_model
    from caocrvfy.pipeline import StreamBatches, make_dataset
    from caocrvfy.plots import plot_curves

    started = time.monotonic()
    if os.environ.get("TF_CONFIG") and (cfg.time_limit or cfg.total_time_limit or not cfg.out):
        # Each worker would read its own clock and stop at a different step, leaving the others
        # waiting for it; and each would name its own default run folder.
        raise DataError("with TF_CONFIG (several workers) give --out, the same on every worker, and stop by "
                        "--epochs rather than --time-limit.")
    # Multi-worker set-up must come before TensorFlow runs anything else.
    strategy, is_chief, worker = distribution_strategy()
    chief_dir = Path(cfg.out or PROJECT_ROOT / "models" / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    # Other workers write their copies to a scratch folder, removed at the end; all resume from the chief's.
    run_dir = chief_dir if is_chief else chief_dir / f".worker-{worker}"
    run_dir.mkdir(parents=True, exist_ok=True)
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    state_path = chief_dir / "state.json"
    state = json.loads(state_path.read_text()) if cfg.resume and state_path.exists() else {}
    if cfg.resume and not state:
        raise SystemExit(f"{chief_dir} has no state.json: nothing to resume; start a new training instead.")
    keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    log.info(f"training on {describe_device()}; run folder {run_dir}")

    # On TensorFlow, XLA is opt-in (slower on a 2-core CPU); JAX without jit runs op by op.
    jit = cfg.jit_compile if keras.backend.backend() == "tensorflow" else True
    init_source = load_init(cfg) if cfg.init and not state else None
    train_data, val_data, charset, max_length, fixed, stream = load_data(cfg)
    input_shape = (*model_size(cfg), cfg.channels)
    n_train = len(train_data[0]) if train_data else cfg.train_size
    augment = cfg.augment == "on" or (cfg.augment == "auto" and cfg.data is not None and n_train < AUGMENT_BELOW)
    head = cfg.head
    if not fixed and head != "ctc":
        log.info("labels have different lengths: using the CTC head")
        head = "ctc"
    cfg.resolved.update(charset=charset, max_length=max_length, fixed_length=fixed, head=head,
                        input_shape=list(input_shape), augment=augment, train_images=n_train,
                        val_images=len(val_data[0]), device=describe_device(),
                        keras_backend=keras.backend.backend(), keras_version=keras.__version__)
    if cfg.class_weights and "class_weights" not in cfg.resolved:
        sample = train_data[1] if train_data else val_data[1]  # a stream draws characters uniformly
        cfg.resolved["class_weights"] = class_weights_for(sample, len(charset))
    if cfg.batch_size is None:
        cfg.batch_size = SMALL_BATCH if cfg.data is not None and n_train < SMALL_SET_BELOW else BATCH
    steps = cfg.steps_per_epoch or max(1, -(-n_train // cfg.batch_size))
    cfg.resolved["steps_per_epoch"] = steps
    cfg.resolved["steps_per_execution"] = cfg.steps_per_execution or (GPU_STEPS_PER_EXECUTION if on_gpu() else 1)

    with scope:
        model, initial_epoch = _model_for(cfg, state, chief_dir, input_shape, charset, max_length, head, augment,
                                          init_source, jit)
    if strategy is not None and os.environ.get("TF_CONFIG"):
        _patch_keras_for_multi_worker(model)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    log.info(f"model {model.name}: {model.count_params():,} parameters, input {input_shape}, "
             f"{len(charset)} characters, up to {max_length} per captcha, augmentation {'on' if augment else 'off'}")

    if stream:
        stream.wait_ready()
        train_ds = StreamBatches(stream, head, len(charset), cfg.batch_size, steps, workers=cfg.feed_threads)
    else:
        train_ds = make_dataset(*train_data, head, len(charset), cfg.batch_size, shuffle=True, seed=cfg.seed)
    val_ds = make_dataset(*val_data, head, len(charset), cfg.batch_size * 2, shuffle=False)

    early = cb.ResumableEarlyStopping(monitor=cb.MONITOR, mode="max", patience=cfg.patience,
                                      restore_best_weights=is_chief, state=state.get("early_stopping"),
                                      best_model=run_dir / "model.keras")
    plateau = cb.ResumableReduceLROnPlateau(monitor="val_loss", factor=cfg.plateau_factor,
                                            patience=cfg.plateau_patience, min_lr=cfg.min_learning_rate,
                                            state=state.get("plateau"))
    warmup_steps = int(cfg.warmup_epochs * steps)
    # Time limits count the training of earlier runs of a resumed one; a total limit gives this run what is left.
    trained = state.get("trained_seconds", 0.0)
    time_limit = training_minutes(cfg, (time.monotonic() - started) / 60)
    if cfg.total_time_limit:
        time_limit += trained / 60
    schedule = [plateau]
    if cfg.schedule == "cosine":
        schedule = [cb.CosineToBudget(cfg.learning_rate, cfg.min_learning_rate, warmup_steps, cfg.epochs, steps,
                                      time_limit, already=trained)]
    callbacks = [
        cb.LinearWarmup(cfg.learning_rate, warmup_steps),
        *schedule,
        cb.TimeLimit(time_limit, already=trained),
        cb.EpochLog(cfg.epochs),
        early,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=bool(state)),
        cb.Checkpoints(run_dir, early, plateau, best=state.get("best"), best_loss=state.get("best_loss"),
                       trained_seconds=trained),
    ]
    interrupted = False
    try:
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps if stream else None, callbacks=callbacks, verbose=0,
                  shuffle=False)  # the pipelines shuffle
    except KeyboardInterrupt:
        interrupted = True
        log.warning(f"interrupted: the last finished epoch is saved; continue with --resume {run_dir}")
    finally:
        if stream:
            stream.close()
    if not is_chief:  # the chief writes the run folder; this worker's copy was scratch
        shutil.rmtree(run_dir, ignore_errors=True)
        if interrupted:
            raise KeyboardInterrupt
        return chief_dir

    if (run_dir / "history.csv").exists():
        plot_curves(run_dir / "history.csv", run_dir / "curves.png", cfg.warmup_epochs, plateau.reductions)
    if not (run_dir / "model.keras").exists():
        raise SystemExit(f"no epoch finished, so {run_dir} holds no model; run again.")
    # The shipped file keeps weights and architecture only: no optimizer state, a third the size.
    best = keras.models.load_model(run_dir / "model.keras", compile=False)
    cb.save_model_atomic(best, run_dir / "model.keras")
    compile_model(best, cfg.learning_rate, cfg.use_focal_loss, cfg.focal_gamma, cfg.focal_alpha, cfg.label_smoothing,
                  jit_compile=jit, **loss_options(cfg))
    scores = best.evaluate(val_ds, verbose=0, return_dict=True)
    metrics = {k: float(v) for k, v in scores.items()} | {"count": int(len(val_data[0])), "set": "validation"}
    cb.write_json_atomic(metrics, run_dir / "metrics.json")
    log.info(f"best model: validation full-match {metrics.get('full_match', float('nan')):.4f}, "
             f"char accuracy {metrics.get('char_accuracy', float('nan')):.4f} on {metrics['count']} images "
             f"-> {run_dir / 'model.keras'}")
    if interrupted:
        raise KeyboardInterrupt
    return chief_dir


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = config_from_args(argv)
    from caocrvfy.data import DataError

    try:
        train(cfg)
    except DataError as exc:
        log.error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
