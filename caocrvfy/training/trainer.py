"""One training run, start to finish: it only orchestrates the pieces of `caocrvfy.training`.

Writes model.keras (best by validation full-match), config.json, history.csv, curves.png and
metrics.json into the run folder, and after every epoch checkpoint/ (last.keras and state.json)
for --resume; a failed run leaves FAILED, or no folder at all when no epoch finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from caocrvfy import locations
from caocrvfy.errors import DataError
from caocrvfy.files import write_json_atomic, write_text_atomic
from caocrvfy.model_config import ModelConfig, load_model_config
from caocrvfy.training import batch_stats, distillation, interrupts, validation
from caocrvfy.training import callbacks as cb
from caocrvfy.training.config import (AUGMENT_BELOW, BATCH, GPU_STEPS_PER_EXECUTION, MIN_LEARNING_RATE,
                                      PLATEAU_FACTOR, SELECT_EPOCH_FROM, SMALL_BATCH, SMALL_SET_BELOW,
                                      TIME_BOUND_EPOCHS, RunPlan, TrainConfig, epoch_limit, rate_schedule,
                                      saved_config_json)
from caocrvfy.training.datasets import TrainingData, load_data

log = logging.getLogger(__name__)

FAILED = "FAILED"  # in a run folder whose last run failed: the reason, in one sentence
FINISH_MINUTES = 0.75  # after the time limit: the cut epoch's validation, saving, the curves, the final scores


def training_minutes(cfg: TrainConfig, used: float, trained: float = 0.0) -> float | None:
    """The training budget in minutes, earlier runs of a resumed one included: what --time-limit
    leaves after the `used` minutes of drawing, loading and building in this run, less the time the
    run needs to finish; `trained`: minutes trained before a --resume."""
    if not cfg.time_limit:
        return None
    left = cfg.time_limit - trained - used - FINISH_MINUTES
    if left <= 0:
        raise DataError(f"preparing the run took {used:.1f} of the {cfg.time_limit:g} minutes of --time-limit"
                        f"{f' ({trained:.1f} trained before)' if trained else ''}, and {FINISH_MINUTES:g} are kept for "
                        "finishing, leaving none for training: give more minutes or a smaller --train-size.")
    log.info(f"{used:.1f} min used before training: training stops after {left:.1f} min (--time-limit {cfg.time_limit:g})")
    return trained + left


def plan_run(cfg: TrainConfig, data: TrainingData, architecture: dict, saved: ModelConfig | None,
             device: str, gpu: bool) -> RunPlan:
    """Resolves the model and the batches from the settings, the data and the device."""
    import keras

    if saved is not None:  # a resumed run keeps its model
        model = saved
    else:
        head = cfg.head
        if not data.fixed_length and head != "ctc":
            log.info("labels have different lengths: using the CTC head")
            head = "ctc"
        augment = cfg.augment == "on" or (cfg.augment == "auto" and cfg.data is not None
                                          and data.train_images < AUGMENT_BELOW)
        model = ModelConfig(charset=data.charset, max_length=data.max_length, fixed_length=data.fixed_length,
                            head=head, height=data.height, width=data.width, augment=augment,
                            conv_dropout=cfg.conv_dropout, head_dropout=cfg.head_dropout,
                            ignore_case=cfg.ignore_case, keep_colour=cfg.keep_colour,
                            merge_case=data.merge_case and head == "ctc",
                            **architecture).check("the training settings")
    batch_size = cfg.batch_size or (SMALL_BATCH if cfg.data is not None and data.train_images < SMALL_SET_BELOW
                                    else BATCH)
    # On TensorFlow, XLA is off (slower on a 2-core CPU); JAX without jit runs op by op.
    backend = keras.backend.backend()
    # With --unlabelled an epoch is a pass over labelled and unlabelled images alike.
    per_epoch = data.train_images + (len(data.unlabelled) if data.unlabelled is not None else 0)
    return RunPlan(model=model, batch_size=batch_size, steps_per_epoch=max(1, -(-per_epoch // batch_size)),
                   steps_per_execution=GPU_STEPS_PER_EXECUTION if gpu else 1, jit_compile=backend != "tensorflow",
                   train_images=data.train_images, val_images=len(data.val[0]), device=device,
                   keras_backend=backend, keras_version=keras.__version__)


def early_stopping_patience(cfg: TrainConfig, data: TrainingData) -> int:
    """--patience, except for a small labelled set with --time-limit and no --patience given:
    its few validation images stop improving in full-match long before the model does, so the
    time limit ends it (the best epoch is kept, by full-match and then validation loss, or the
    last one under `SELECT_EPOCH_FROM` validation images)."""
    if cfg.data and cfg.time_limit and "patience" not in cfg.given and data.train_images < SMALL_SET_BELOW:
        log.info(f"{data.train_images} labelled training images and --time-limit {cfg.time_limit:g}: no early "
                 "stopping, the time limit ends the run")
        return epoch_limit(cfg)
    return cfg.patience


def model_for_run(cfg: TrainConfig, plan: RunPlan, checkpoint: cb.Checkpoint | None, init):
    """The compiled model and the epoch to start from: the last checkpoint on --resume, else
    a new model (with the weights of `init`, (model, ModelConfig) from --init, where they fit)."""
    import keras

    from caocrvfy.model_enhanced import allow_jit_on_jax, build_model
    from caocrvfy.training.compile import compile_model
    from caocrvfy.training.warm_start import transfer_weights

    if checkpoint:
        state = checkpoint.state
        log.info(f"resuming after epoch {state['epoch']} at learning rate {state['learning_rate']:.2e}")
        model = keras.models.load_model(checkpoint.model_path)
        allow_jit_on_jax(model)
        model.jit_compile = plan.jit_compile
        model.steps_per_execution = plan.steps_per_execution
        return model, state["epoch"]
    model = build_model(plan.model)
    if init is not None:
        copied = transfer_weights(init[0], model, init[1].unit_charset, plan.model.unit_charset)
        log.info(f"initialised {copied} of {sum(1 for layer in model.layers if layer.weights)} layers from {cfg.init}")
    compile_model(model, cfg.learning_rate, jit_compile=plan.jit_compile,
                  steps_per_execution=plan.steps_per_execution, **loss_options(cfg))
    return model, 0


def loss_options(cfg: TrainConfig) -> dict:
    return dict(loss=cfg.loss, focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha)


def train(cfg: TrainConfig, callbacks: tuple = ()) -> Path:
    """Runs one training and returns the run folder; `callbacks`: Keras callbacks put before the
    run's own (a benchmark's per-epoch diagnostics; config.json is written before fit starts).

    A KeyboardInterrupt (Ctrl-C; `caocrvfy train` turns SIGTERM into one) ends the training
    after the last finished epoch: the best model is scored and kept, the checkpoint is left for
    --resume, and the interrupt is raised again. A run that ends, failed or interrupted, before
    any epoch finished removes the run folder it made (one that was there before is left, with
    a FAILED file after a failure); a run that fails later leaves FAILED, the reason in one
    sentence, beside a checkpoint that --resume continues from (a run of the folder that ends
    well removes it).
    """
    import keras

    from caocrvfy.startup import captured_native_stderr
    from caocrvfy.training.distribute import describe_device, distribution_strategy, on_gpu
    from caocrvfy.training.warm_start import architecture, chosen_init, read_init

    started = time.monotonic()
    if os.environ.get("TF_CONFIG") and (cfg.time_limit or not cfg.out):
        # Each worker would read its own clock and stop at a different step, leaving the others
        # waiting for it; and each would name its own default run folder.
        raise DataError("with TF_CONFIG (several workers) give --out, the same on every worker, and stop by "
                        "--epochs rather than --time-limit.")
    # Multi-worker set-up must come before TensorFlow runs anything else; looking for devices is
    # when TensorFlow prints its native start-up lines (caocrvfy.startup).
    with captured_native_stderr():
        strategy, is_chief, worker, note = distribution_strategy()
        device, gpu = describe_device(), on_gpu()
    if note:
        log.info(note)
    chief_dir = Path(cfg.out or locations.runs_dir() / time.strftime("%Y%m%d-%H%M%S"))
    # Other workers write their copies to a scratch folder, removed at the end; all resume from the chief's.
    run_dir = chief_dir if is_chief else chief_dir / f".worker-{worker}"
    checkpoint = cb.find_checkpoint(chief_dir) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        raise DataError(f"{chief_dir} holds no checkpoint ({cb.CHECKPOINT}/{cb.STATE}): nothing to resume; "
                        "start a new training instead.")
    state = checkpoint.state if checkpoint else {}
    saved = load_model_config(chief_dir / "config.json") if state else None
    keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    log.info(f"training on {device}; run folder {run_dir}")

    init_path = None if state else chosen_init(cfg)
    if init_path and init_path != cfg.init:  # config.json records the model it started from
        cfg = dataclasses.replace(cfg, init=init_path)
    init = read_init(init_path) if init_path else None
    chosen = architecture(cfg, init[1] if init else None)
    data = load_data(cfg, channels=saved.channels if saved else chosen["channels"], saved=saved,
                     init_charset=init[1].charset if init else None)
    try:
        plan = plan_run(cfg, data, chosen, saved, device, gpu)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            with interrupts.unmasked():  # an error a signal caused is the signal's interrupt
                _run(cfg, plan, data, checkpoint, run_dir, strategy, is_chief, init, started, callbacks)
        except BaseException as exc:
            if is_chief:  # a saved epoch, this run's or a resumed one's, decides the clean-up
                after_failure(run_dir, created, cb.has_checkpoint(run_dir), exc)
            raise
    finally:
        if data.stream:
            data.stream.close()
        if not is_chief:  # the chief writes the run folder; this worker's copy was scratch
            shutil.rmtree(run_dir, ignore_errors=True)
    return chief_dir


def after_failure(run_dir: Path, created: bool, finished_epoch: bool, exc: BaseException) -> None:
    """Removes a run folder this run made that holds no finished epoch; otherwise marks a failed
    one with a FAILED file (an interrupted one is left as it is, to be resumed)."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    try:
        if created and not finished_epoch:
            shutil.rmtree(run_dir)
            log.warning(f"{'interrupted' if interrupted else 'failed'} before the first epoch finished: "
                        f"removed the run folder {run_dir}")
            return
        if interrupted:  # in fit it was handled there; later it may only have cut a save short
            cb.tidy_checkpoints(run_dir)
        else:  # it may have come in the middle of a save
            cb.settle(run_dir)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            resume = f"; continue with --resume {run_dir}" if finished_epoch else ""
            write_text_atomic(f"training failed: {reason}{resume}\n", run_dir / FAILED)
    except (OSError, DataError) as cleanup:  # the failure itself is what the user must see
        log.warning(f"could not clean up {run_dir} after the failure: {cleanup}")


def statistics_images(data: TrainingData, seed: int):
    """What `PreciseBatchNorm` recomputes the statistics from: a fixed draw of the training images
    (labelled and unlabelled alike: no label is read), or fresh ones from a synthetic stream."""
    rng = np.random.default_rng(seed)
    if data.stream:
        return lambda: data.stream.sample(rng, batch_stats.STAT_IMAGES)[0]
    images = data.train[0] if data.unlabelled is None else np.concatenate([data.train[0], data.unlabelled])
    chosen = images[np.sort(rng.permutation(len(images))[:batch_stats.STAT_IMAGES])]
    return lambda: chosen


def _run(cfg: TrainConfig, plan: RunPlan, data: TrainingData, checkpoint: cb.Checkpoint | None, run_dir: Path,
         strategy, is_chief: bool, init, started: float, extra_callbacks: tuple = ()) -> None:
    """The run once its folder exists: the model, fit, and the best model's scores."""
    import keras

    from caocrvfy.data.pipeline import StreamBatches, make_dataset
    from caocrvfy.training.compile import compile_model
    from caocrvfy.training.curves import plot_curves
    from caocrvfy.training.distribute import patch_keras_for_multi_worker
    from caocrvfy.training.pseudo_labels import LabelPool, PseudoLabels

    state = checkpoint.state if checkpoint else {}
    if checkpoint and is_chief:  # what a kill may have left one epoch ahead of the checkpoint
        cb.repair_best(checkpoint, run_dir / "model.keras")
        cb.trim_history(run_dir / "history.csv", state["epoch"])
    with strategy.scope() if strategy else contextlib.nullcontext():
        model, initial_epoch = model_for_run(cfg, plan, checkpoint, init)
        if cfg.teacher:
            teacher = distillation.load_teacher(cfg.teacher, model, plan.model)
            distillation.attach_teacher(model, teacher, cfg.distill_temperature, cfg.distill_weight)
            log.info(f"distilling from {cfg.teacher} at temperature {cfg.distill_temperature:g}, "
                     f"weight {cfg.distill_weight:g} (the true labels {1 - cfg.distill_weight:g})")
    if strategy is not None and os.environ.get("TF_CONFIG"):
        patch_keras_for_multi_worker(model)
    write_text_atomic(saved_config_json(cfg, plan), run_dir / "config.json")
    log.info(f"model {model.name}: {model.count_params():,} parameters, input {plan.model.input_shape}, "
             f"{plan.model.num_classes} characters, up to {plan.model.max_length} per captcha, "
             f"augmentation {'on' if plan.model.augment else 'off'}")

    head, classes = plan.model.head, plan.model.num_classes
    pool = None
    # Under a distribution strategy the compiled (greedy) figures are kept: no predict in fit.
    predicted = validation.PredictedValidation(data.val, plan.model, replace_logs=strategy is None)
    if data.stream:
        data.stream.wait_ready()
        train_ds = StreamBatches(data.stream, head, classes, plan.batch_size, plan.steps_per_epoch)
    elif data.unlabelled is not None:
        pool = LabelPool(*data.train)
        train_ds = StreamBatches(pool, head, classes, plan.batch_size, plan.steps_per_epoch)
    else:
        train_ds = make_dataset(*data.train, head, classes, plan.batch_size, shuffle=True, seed=cfg.seed)
    val_ds = make_dataset(*data.val, head, classes, plan.batch_size * 2, shuffle=False)

    early = cb.ResumableEarlyStopping(monitor=cb.MONITOR, mode="max", patience=early_stopping_patience(cfg, data),
                                      restore_best_weights=is_chief, state=state.get("early_stopping"),
                                      best_model=run_dir / "model.keras")
    plateau = cb.ResumableReduceLROnPlateau(monitor="val_loss", factor=PLATEAU_FACTOR, patience=cfg.plateau_patience,
                                            min_lr=MIN_LEARNING_RATE, state=state.get("plateau"))
    warmup_steps = int(cfg.warmup_epochs * plan.steps_per_epoch)
    epochs = epoch_limit(cfg)
    # The time limit counts the training of earlier runs of a resumed one.
    trained = state.get("trained_seconds", 0.0)
    budget = training_minutes(cfg, (time.monotonic() - started) / 60, trained / 60)
    pseudo = (PseudoLabels(pool, data.unlabelled, predicted, plan.model, cfg.labelled_first, minutes=budget,
                           epochs=epochs, already=trained) if pool is not None else None)
    rate = rate_schedule(cfg.schedule, len(data.val[0]))
    schedule = [plateau]
    if rate == "cosine":
        schedule = [cb.CosineToBudget(cfg.learning_rate, MIN_LEARNING_RATE, warmup_steps, epochs,
                                      plan.steps_per_epoch, budget, already=trained)]
    keep_last = len(data.val[0]) < SELECT_EPOCH_FROM
    if keep_last:
        log.info(f"{len(data.val[0])} validation images cannot tell epochs apart: the last epoch is kept"
                 + (", and the rate decays on a cosine to the end" if rate == "cosine" else ""))
    checkpoints = cb.Checkpoints(run_dir, early, plateau, best=state.get("best"), best_loss=state.get("best_loss"),
                                 best_epoch=state.get("best_epoch"), trained_seconds=trained, keep_last=keep_last)
    # Under a distribution strategy each replica keeps its own statistics: left as trained.
    precise = ([batch_stats.PreciseBatchNorm(statistics_images(data, cfg.seed))]
               if cfg.bn_statistics == "recomputed" and strategy is None else [])
    callbacks = [
        *extra_callbacks,
        *precise,
        predicted,
        cb.LinearWarmup(cfg.learning_rate, warmup_steps),
        *schedule,
        cb.TimeLimit(budget, already=trained),
        *([pseudo] if pseudo else []),
        cb.EpochLog(None if epochs == TIME_BOUND_EPOCHS else epochs),
        early,
        cb.HistoryLogger(str(run_dir / "history.csv"), append=bool(state)),
        checkpoints,
        cb.PendingInterrupt(),  # last: a signal a finalizer swallowed ends the run after the save
    ]
    interrupted: KeyboardInterrupt | None = None
    try:
        with interrupts.unmasked(), cb.FirstStepLines() as first_step:
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=plan.steps_per_epoch if data.stream or pseudo else None,
                      callbacks=[first_step, *callbacks], verbose=0, shuffle=False)  # the pipelines shuffle
        interrupts.raise_pending()  # one that came in the last epoch's save
    except KeyboardInterrupt as exc:
        interrupts.clear_pending()
        if not (state or checkpoints.saved):
            raise  # nothing to keep: train() removes the folder
        interrupted = exc
        log.warning(f"interrupted: the last finished epoch is saved; continue with --resume {run_dir}")
    if not is_chief:
        if interrupted:
            raise interrupted
        return

    if interrupted:  # it may have come in the middle of a save
        cb.settle(run_dir)
    else:  # a resume that trained no epoch leaves checkpoint.old/ of a kill between renames
        cb.tidy_checkpoints(run_dir)
    if not (run_dir / "model.keras").exists():
        raise DataError(f"no epoch finished, so {run_dir} holds no model; run again.")
    if (run_dir / "history.csv").exists():
        plot_curves(run_dir / "history.csv", run_dir / "curves.png", cfg.warmup_epochs, plateau.reductions)
    # The shipped file keeps weights and architecture only: no optimizer state, a third the size.
    best = keras.models.load_model(run_dir / "model.keras", compile=False)
    cb.save_model_atomic(best, run_dir / "model.keras")
    compile_model(best, cfg.learning_rate, jit_compile=plan.jit_compile, **loss_options(cfg))
    scores = {k: float(v) for k, v in best.evaluate(val_ds, verbose=0, return_dict=True).items()}
    if validation.reads_differently(plan.model):  # as predict reads
        scores |= validation.predicted_scores(best, data.val, plan.model)
    metrics = scores | {"count": int(len(data.val[0])), "set": "validation"}
    write_json_atomic(metrics, run_dir / "metrics.json")
    log.info(f"best model: validation full-match {metrics.get('full_match', float('nan')):.4f}, "
             f"char accuracy {metrics.get('char_accuracy', float('nan')):.4f} on {metrics['count']} images "
             f"-> {run_dir / 'model.keras'}")
    (run_dir / FAILED).unlink(missing_ok=True)  # left by an earlier run of this folder that failed
    if interrupted:
        raise interrupted
    interrupts.raise_pending()  # one that came while the best model was scored: the run is whole
