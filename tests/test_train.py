import csv
import dataclasses
import importlib.util
import json
import re
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image, ImageDraw

import caocrvfy
from caocrvfy.model_config import ModelConfig
from caocrvfy.model_enhanced import build_model, model_head
from caocrvfy.train import main as train_main
from caocrvfy.training import callbacks as cb
from caocrvfy.training.config import TrainConfig, config_from_args
from caocrvfy.training.trainer import train
from caocrvfy.training.warm_start import transfer_weights

pytestmark = pytest.mark.eager_steps

REPO = Path(caocrvfy.__file__).resolve().parent.parent


def history_rows(run: Path) -> list[dict]:
    with (run / "history.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- a full (tiny) run


def test_training_writes_the_run_folder(trained_run):
    for name in ("model.keras", "config.json", "history.csv", "curves.png", "metrics.json", "checkpoint/state.json",
                 "checkpoint/last.keras"):
        assert (trained_run / name).is_file(), name
    assert not list(trained_run.glob("*partial*"))  # atomic writes leave no temporary files
    assert (trained_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_json_holds_the_resolved_settings(trained_run, trained_config):
    config = load_json(trained_run / "config.json")
    model, run = config["model"], config["run"]
    assert config["version"] == 2
    assert model["charset"] == "0123456789"
    assert (model["height"], model["width"], model["channels"]) == (24, 64, 1)
    assert model["head"] == "softmax"
    assert (model["max_length"], model["fixed_length"]) == (3, True)
    assert (run["train_images"], run["val_images"], run["steps_per_epoch"], run["batch_size"]) == (32, 16, 2, 16)
    assert model["augment"] is False  # synthetic data: no augmentation unless asked
    assert model["filters"] == [8, 8, 8, 8] and config["training"]["epochs"] == trained_config.epochs
    # The "model" section is exactly what build_model takes, and the predictor reads it back.
    assert ModelConfig.from_json(model) == ModelConfig(**{**model, "filters": tuple(model["filters"])})


def test_history_metrics_and_state(trained_run):
    rows = history_rows(trained_run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "val_loss", "val_full_match", "val_char_accuracy", "lr"} <= set(rows[0])
    assert all(math.isfinite(float(r["loss"])) for r in rows)

    metrics = load_json(trained_run / "metrics.json")
    assert metrics["count"] == 16 and metrics["set"] == "validation"
    for key in ("full_match", "char_accuracy", "precision", "recall"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert math.isfinite(metrics["loss"])

    state = load_json(trained_run / "checkpoint" / "state.json")
    assert state["epoch"] == 2
    assert set(state) >= {"best", "learning_rate", "early_stopping", "plateau"}


def test_saved_model_is_the_reader_without_optimizer(trained_run):
    model = keras.models.load_model(trained_run / "model.keras")
    assert not model.compiled and getattr(model, "optimizer", None) is None
    assert keras.models.load_model(trained_run / "checkpoint" / "last.keras").optimizer is not None  # for --resume
    assert model_head(model) == "softmax"
    assert tuple(model.input.shape) == (None, 24, 64, 1) and model.input.dtype == "uint8"
    assert model.output.shape == (None, 3, 10)


def test_synthetic_captchas_are_cached(trained_run, synthetic_cache):
    (folder,) = synthetic_cache.glob("synthetic-3x10-64x24-*")
    assert len(list((folder / "train").glob("*.png"))) == 32
    assert len(list((folder / "val").glob("*.png"))) == 16


# ---------------------------------------------------------------- callbacks


class RecordRate(keras.callbacks.Callback):
    """The learning rate each optimizer step trains at."""

    def __init__(self):
        super().__init__()
        self.rates: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(cb.current_lr(self.model))


def tiny_regression(learning_rate: float = 0.5) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    x = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
    return model, x, x.sum(1, keepdims=True)


def test_linear_warmup_starts_above_zero_and_reaches_the_target():
    model, x, y = tiny_regression(learning_rate=0.5)
    record = RecordRate()
    model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[cb.LinearWarmup(0.1, 4), record])
    np.testing.assert_allclose(record.rates, [0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rtol=1e-6)


def test_schedules_count_optimizer_steps_with_several_steps_per_call():
    # Keras then calls the batch hooks once per call of 2 steps: the rate is set for the first.
    model, x, y = tiny_regression(learning_rate=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", steps_per_execution=2)
    record = RecordRate()
    cosine = cb.CosineToBudget(0.1, 0.001, warmup_steps=2, epochs=3, steps_per_epoch=2, minutes=None)
    model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[cb.LinearWarmup(0.1, 2), cosine, record])
    expected = [0.05] + [0.001 + 0.0495 * (1 + math.cos(math.pi * k / 4)) for k in (1, 3)]
    np.testing.assert_allclose(record.rates, expected, rtol=1e-5)
    assert int(model.optimizer.iterations) == 6


def test_linear_warmup_reaches_the_target_with_several_steps_per_call():
    model, x, y = tiny_regression(learning_rate=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", steps_per_execution=2)
    record = RecordRate()  # warmup of 3 steps; calls begin at steps 0, 2, 4
    model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[cb.LinearWarmup(0.1, 3), record])
    np.testing.assert_allclose(record.rates, [0.1 / 3, 0.1, 0.1], rtol=1e-6)


def test_linear_warmup_carries_on_from_the_optimizer_step():
    model, x, y = tiny_regression()
    model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[cb.LinearWarmup(0.1, 8)])
    record = RecordRate()  # a resumed run: 6 steps done, warmup of 8
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[cb.LinearWarmup(0.1, 8), record])
    np.testing.assert_allclose(record.rates, [0.0875, 0.1, 0.1, 0.1], rtol=1e-6)


def test_linear_warmup_leaves_the_rate_to_reduce_lr_on_plateau():
    model, x, y = tiny_regression()
    record = RecordRate()
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
    model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[cb.LinearWarmup(0.1, 2), plateau, record])
    assert record.rates[:2] == pytest.approx([0.05, 0.1])
    assert record.rates[-1] < 0.1  # cut by the plateau callback, not reset by warmup


def test_logged_rate_is_the_rate_each_epoch_starts_with(caplog):
    model, x, y = tiny_regression(learning_rate=0.1)  # as train(): compiled at the target rate
    with caplog.at_level("INFO", logger="caocrvfy"):
        history = model.fit(x, y, batch_size=2, epochs=3, verbose=0,
                            callbacks=[cb.LinearWarmup(0.1, 4), cb.EpochLog(3)])
    np.testing.assert_allclose(history.history["lr"], [0.025, 0.075, 0.1], rtol=1e-6)
    rates = [r.getMessage().split(" lr=")[1].split()[0] for r in caplog.records if " lr=" in r.getMessage()]
    assert rates == ["2.50e-02..5.00e-02", "7.50e-02..1.00e-01", "1.00e-01"]  # warmup moves it within an epoch


def test_cosine_to_budget_after_warmup():
    model, x, y = tiny_regression()
    record = RecordRate()
    cosine = cb.CosineToBudget(0.1, 0.001, warmup_steps=2, epochs=3, steps_per_epoch=2, minutes=None)
    model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[cb.LinearWarmup(0.1, 2), cosine, record])
    expected = [0.05, 0.1] + [0.001 + 0.0495 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)]
    np.testing.assert_allclose(record.rates, expected, rtol=1e-5)


def test_cosine_to_budget_goes_on_after_a_resume():
    model, x, y = tiny_regression()
    record = RecordRate()
    # 30 of 60 seconds trained before: the first step after warmup is at the middle of the decay.
    cosine = cb.CosineToBudget(0.1, 0.0, warmup_steps=0, epochs=1, steps_per_epoch=2, minutes=1.0, already=30.0)
    model.fit(x[:2], y[:2], batch_size=2, epochs=1, verbose=0, callbacks=[cosine, record])
    assert record.rates[0] == pytest.approx(0.05, rel=0.02)


# ---------------------------------------------------------------- stopping and resuming


def test_time_limit_counts_the_training_before_a_resume():
    model, x, y = tiny_regression()
    limit = cb.TimeLimit(1.0, already=61.0)
    model.fit(x, y, batch_size=2, epochs=5, verbose=0, callbacks=[limit])
    assert limit.reached and model.stop_training


def test_time_limit_leaves_training_what_preparing_did_not_use():
    from caocrvfy.errors import DataError
    from caocrvfy.training.trainer import FINISH_MINUTES, training_minutes

    assert training_minutes(TrainConfig(), used=3.0) is None
    assert training_minutes(TrainConfig(time_limit=20.0), used=3.0) == pytest.approx(17.0 - FINISH_MINUTES)
    # Resumed after 5 trained minutes: the budget still counts them, and this run trains what is left.
    assert training_minutes(TrainConfig(time_limit=20.0), used=3.0, trained=5.0) == pytest.approx(17.0 - FINISH_MINUTES)
    with pytest.raises(DataError, match="--time-limit"):
        training_minutes(TrainConfig(time_limit=2.0), used=2.0)
    with pytest.raises(DataError, match="4.0 trained before"):
        training_minutes(TrainConfig(time_limit=5.0), used=0.5, trained=4.0)



def test_training_callbacks_leave_batch_ends_to_keras(tmp_path):
    # A batch-end hook makes Keras fetch every step's logs, waiting for the device each step.
    early = cb.ResumableEarlyStopping(monitor=cb.MONITOR, mode="max")
    plateau = cb.ResumableReduceLROnPlateau(monitor="val_loss")
    per_batch = [cb.LinearWarmup(0.001, 10), cb.CosineToBudget(0.001, 1e-6, 10, 3, 10, 1.0), cb.TimeLimit(1.0),
                 cb.EpochLog(3), early, plateau, cb.Checkpoints(tmp_path, early, plateau)]
    for callback in per_batch:
        assert type(callback).on_train_batch_end is keras.callbacks.Callback.on_train_batch_end, callback


@pytest.mark.slow
def test_time_limit_stops_early_and_keeps_the_model(tmp_path, synthetic_cache, monkeypatch):
    from caocrvfy.training import trainer

    # What --time-limit leaves for training depends on how long preparing took: make it a moment.
    monkeypatch.setattr(trainer, "training_minutes", lambda cfg, used, trained=0.0: 1e-6)
    run = tmp_path / "run"
    code = train_main([
        "--charset", "0-9", "--length", "3", "--width", "64", "--height", "24",
        "--train-size", "32", "--val-size", "16", "--cache-dir", str(synthetic_cache),
        "--filters", "8,8,8,8", "--dense-units", "8", "--rnn-units", "8", "--batch-size", "16",
        "--epochs", "50", "--time-limit", "5", "--out", str(run),
    ])
    assert code == 0
    assert len(history_rows(run)) == 1  # the first epoch was cut short, validated and saved
    assert load_json(run / "checkpoint" / "state.json")["epoch"] == 1
    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()
    assert load_json(run / "config.json")["training"]["time_limit"] == 5.0
    assert load_json(run / "checkpoint" / "state.json")["trained_seconds"] > 0


@pytest.mark.slow
def test_synthetic_memory_draws_in_memory_and_writes_nothing(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    code = train_main([
        "--charset", "0-9", "--length", "3", "--width", "64", "--height", "24", "--synthetic", "memory",
        "--train-size", "24", "--val-size", "8", "--cache-dir", str(cache), "--time-limit", "10",
        "--filters", "8,8,8,8", "--dense-units", "8", "--rnn-units", "8", "--batch-size", "8", "--epochs", "1",
        "--conv-dropout", "0", "--head-dropout", "0.1", "--out", str(run),
    ])
    assert code == 0 and not cache.exists()
    config = load_json(run / "config.json")
    assert (config["run"]["train_images"], config["run"]["val_images"]) == (24, 8)
    model = keras.models.load_model(run / "model.keras", compile=False)
    assert (model.get_layer("conv_dropout").rate, model.get_layer("head_dropout").rate) == (0.0, 0.1)


@pytest.mark.slow
def test_jax_backend_trains_augmented_models_compiled(tmp_path, synthetic_cache):
    # GPU boxes run Keras on JAX; without jit (which Keras refuses for its augmentation layers
    # unless told they are safe there) a step runs op by op.
    pytest.importorskip("jax")
    run = tmp_path / "run"
    args = ["--charset", "0-9", "--length", "3", "--width", "64", "--height", "24", "--train-size", "32",
            "--val-size", "16", "--cache-dir", str(synthetic_cache), "--filters", "8,8,8,8", "--dense-units", "8",
            "--rnn-units", "8", "--batch-size", "16", "--epochs", "1", "--augment", "on", "--out", str(run)]
    done = subprocess.run([sys.executable, "-m", "caocrvfy.train", *args], capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "JAX on" in done.stderr and "augmentation on" in done.stderr
    assert "jit_compile=False" not in done.stderr
    assert (run / "model.keras").is_file()


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, make_config) -> Path:
    run = tmp_path_factory.mktemp("resume")
    train(make_config(run, epochs=1))
    assert len(history_rows(run)) == 1
    # --resume reads every setting from config.json (only --time-limit may be given again).
    config = load_json(run / "config.json")
    config["training"]["epochs"] = 2
    (run / "config.json").write_text(json.dumps(config))
    train(config_from_args(["--resume", str(run)]))
    return run


@pytest.mark.slow
def test_resume_continues_with_the_next_epoch(resumed_run):
    assert [int(r["epoch"]) for r in history_rows(resumed_run)] == [0, 1]
    assert (resumed_run / "history.csv").read_text().count("val_loss") == 1  # one header
    assert load_json(resumed_run / "checkpoint" / "state.json")["epoch"] == 2
    config = load_json(resumed_run / "config.json")
    assert config["training"]["resume"] == str(resumed_run) and config["model"]["charset"] == "0123456789"


@pytest.mark.slow
def test_resume_config_comes_from_the_run_folder(resumed_run):
    cfg = config_from_args(["--resume", str(resumed_run), "--time-limit", "3"])
    assert (cfg.epochs, cfg.length, cfg.filters, cfg.head) == (2, 3, (8, 8, 8, 8), "ctc")
    assert (cfg.out, cfg.resume, cfg.time_limit) == (str(resumed_run), str(resumed_run), 3.0)


def test_resume_without_state_is_refused(tmp_path):
    from caocrvfy.errors import DataError

    config = {"version": 2, "model": ModelConfig().to_json(), "training": TrainConfig().to_json()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="nothing to resume"):
        train(config_from_args(["--resume", str(tmp_path)]))


def test_resume_of_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--resume", str(tmp_path)])
    assert "is not a run folder (it has no config.json)" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--conv-dropout", "1"], ["--time-limit", "0"], ["--filters", "8,0"],
                                    ["--batch-size", "0"], ["--width", "0"], ["--val-fraction", "1.5"],
                                    ["--labelled-first", "1"]])
def test_settings_out_of_range_are_refused_by_name(option, capsys):
    with pytest.raises(SystemExit):
        config_from_args(option)
    assert option[0] in capsys.readouterr().err


@pytest.mark.parametrize("options,message", [
    (["--loss", "bogus"], "--loss: loss 'bogus'"), (["--loss", "dice"], "--loss dice needs per-position outputs"),
    (["--width", "40"], "--width 40 gives 5 CTC steps"), (["--charset", " "], "--charset is empty"),
    (["--resume", "RUN", "--learning-rate", "0.1"], "--resume keeps the run's settings"),
    (["--labelled-first", "0.3"], "--labelled-first sets when the readings of --unlabelled"),
])
def test_settings_that_cannot_work_are_refused_before_any_work(options, message, capsys, tmp_path):
    options = [str(tmp_path) if o == "RUN" else o for o in options]
    if "--resume" in options:
        config = {"version": 2, "model": ModelConfig().to_json(), "training": TrainConfig().to_json()}
        (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        config_from_args(options)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--input-scale", "0.5"], ["--no-cache"], ["--total-time-limit", "20"],
                                    ["--stream-workers", "2"], ["--no-focal-loss"], ["--class-weights"]])
def test_removed_options_are_refused_by_name(option, capsys):
    with pytest.raises(SystemExit):
        config_from_args(option)
    assert option[0] in capsys.readouterr().err


def test_config_from_args():
    cfg = config_from_args(["--filters", "8,16", "--loss", "ce", "--head", "sigmoid", "--no-attention",
                            "--time-limit", "1.5", "--charset", "0-9"])
    assert cfg.filters == (8, 16) and cfg.loss == "ce" and cfg.attention is False
    assert set(cfg.given) == {"filters", "attention"}  # architecture settings named on the command line
    assert (cfg.head, cfg.time_limit, cfg.charset, cfg.epochs) == ("sigmoid", 1.5, "0-9", TrainConfig().epochs)


@pytest.mark.parametrize("options, limit", [
    ([], 150),  # no time limit: the default count
    (["--time-limit", "10"], "time"),  # the time limit alone ends the run
    (["--time-limit", "10", "--epochs", "40"], 40),  # a count named wins
    (["--epochs", "40"], 40),
])
def test_a_time_limit_with_no_epochs_named_is_not_cut_short_by_the_default_count(options, limit):
    from caocrvfy.training.config import TIME_BOUND_EPOCHS, epoch_limit

    assert epoch_limit(config_from_args(options)) == (TIME_BOUND_EPOCHS if limit == "time" else limit)


def test_epochs_named_again_on_resume_count_under_its_time_limit(tmp_path):
    from caocrvfy.training.config import TIME_BOUND_EPOCHS, epoch_limit

    saved = TrainConfig(time_limit=10.0)  # the first run named no --epochs
    config = {"version": 2, "model": ModelConfig().to_json(), "training": saved.to_json()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert epoch_limit(config_from_args(["--resume", str(tmp_path), "--epochs", "30"])) == 30
    assert epoch_limit(config_from_args(["--resume", str(tmp_path), "--time-limit", "20"])) == TIME_BOUND_EPOCHS
    assert epoch_limit(TrainConfig(time_limit=10.0, epochs=50)) == 50  # the Python API's count, given, counts


# ---------------------------------------------------------------- labelled folders


@pytest.fixture
def mixed_length_folder(tmp_path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        label = "".join(rng.choice(list("0123456789"), size=2 + i % 3))
        image = Image.new("L", (64, 32), 255)
        ImageDraw.Draw(image).text((4, 8), label, fill=int(rng.integers(0, 100)))
        image.save(folder / f"{label}_{i}.png")
    return folder


@pytest.mark.slow
def test_mixed_label_lengths_pick_the_ctc_head(mixed_length_folder, make_config, tmp_path):
    cfg = make_config(tmp_path / "run", data=str(mixed_length_folder), charset=None, head="softmax",
                      epochs=1, batch_size=None, augment="off")
    run = train(cfg)
    config = load_json(run / "config.json")
    model, resolved = config["model"], config["run"]
    assert resolved["batch_size"] == 16  # a small labelled set gets the small-batch default
    assert model["head"] == "ctc"
    assert (model["fixed_length"], model["max_length"]) == (False, 4)
    assert (model["height"], model["width"]) == (64, 128)  # height 64, width from the images' 2:1 ratio
    assert resolved["train_images"] + resolved["val_images"] == 12 and resolved["val_images"] >= 1
    assert model_head(keras.models.load_model(run / "model.keras", compile=False)) == "ctc"


def test_best_model_ties_on_full_match_go_to_the_lower_validation_loss(tmp_path):
    model, _, _ = tiny_regression()
    early = cb.ResumableEarlyStopping(monitor=cb.MONITOR, mode="max", patience=5, best_model=tmp_path / "model.keras")
    plateau = cb.ResumableReduceLROnPlateau(monitor="val_loss")
    checkpoints = cb.Checkpoints(tmp_path, early, plateau)
    for callback in (early, plateau, checkpoints):
        callback.set_model(model)
        callback.on_train_begin()
    saved = []
    for epoch, (score, loss) in enumerate([(0.9, 0.5), (1.0, 0.4), (1.0, 0.2), (1.0, 0.3), (0.95, 0.1)]):
        model.layers[-1].set_weights([w * 0 + epoch for w in model.layers[-1].get_weights()])
        checkpoints.on_epoch_end(epoch, {cb.MONITOR: score, "val_loss": loss})
        saved.append(float(keras.models.load_model(tmp_path / "model.keras").layers[-1].get_weights()[0].flat[0]))
    assert saved == [0, 1, 2, 2, 2]  # 1.0 at loss 0.2 beats 1.0 at 0.4; neither 0.3 nor a lower score wins
    assert load_json(tmp_path / "checkpoint" / "state.json")["best_loss"] == 0.2


@pytest.mark.parametrize("keep_last, kept", [(False, [0, 1, 1, 1]), (True, [0, 1, 2, 3])])
def test_a_handful_of_validation_images_keeps_the_last_epoch(tmp_path, keep_last, kept):
    model, _, _ = tiny_regression()
    early = cb.ResumableEarlyStopping(monitor=cb.MONITOR, mode="max", patience=5, best_model=tmp_path / "model.keras")
    plateau = cb.ResumableReduceLROnPlateau(monitor="val_loss")
    checkpoints = cb.Checkpoints(tmp_path, early, plateau, keep_last=keep_last)
    for callback in (early, plateau, checkpoints):
        callback.set_model(model)
        callback.on_train_begin()
    saved = []
    for epoch, (score, loss) in enumerate([(0.5, 0.5), (1.0, 0.1), (0.5, 0.3), (1.0, 0.2)]):
        model.layers[-1].set_weights([w * 0 + epoch for w in model.layers[-1].get_weights()])
        checkpoints.on_epoch_end(epoch, {cb.MONITOR: score, "val_loss": loss})
        saved.append(float(keras.models.load_model(tmp_path / "model.keras").layers[-1].get_weights()[0].flat[0]))
    assert saved == kept


def test_several_workers_need_out_and_epochs(monkeypatch, make_config, tmp_path):
    from caocrvfy.errors import DataError

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}')
    with pytest.raises(DataError, match="--epochs rather than --time-limit"):
        train(make_config(tmp_path / "run", time_limit=1.0))
    with pytest.raises(DataError, match="give --out"):
        train(dataclasses.replace(make_config(tmp_path / "run"), out=None))


def test_transfer_weights_copies_matching_layers():
    tiny = dict(filters=(8, 8, 8, 8), dense_units=8, rnn_units=8)
    source = build_model(charset="0123456789", max_length=3, height=24, width=64, **tiny)
    target = build_model(charset="0123456789ab", max_length=3, height=24, width=64, **tiny)
    copied = transfer_weights(source, target)
    with_weights = [layer for layer in target.layers if layer.weights]
    assert copied == len(with_weights) - 1  # all but the output layer, whose class count differs
    np.testing.assert_array_equal(source.get_layer("features").get_weights()[0],
                                  target.get_layer("features").get_weights()[0])


@pytest.mark.slow
def test_init_adopts_the_saved_architecture_unless_a_setting_is_given(tmp_path, synthetic_cache, caplog):
    tiny = ["--charset", "0-9", "--length", "3", "--width", "64", "--height", "24", "--train-size", "32",
            "--val-size", "16", "--cache-dir", str(synthetic_cache), "--filters", "8,8,8,8", "--dense-units", "8",
            "--rnn-units", "8", "--batch-size", "16", "--epochs", "1"]
    assert train_main([*tiny, "--out", str(tmp_path / "stride8")]) == 0
    # Finishing a stride-8 model at stride 4: the named setting wins and every layer's weights fit.
    with caplog.at_level("INFO", logger="caocrvfy"):
        assert train_main([*tiny, "--init", str(tmp_path / "stride8"), "--column-stride=4",
                           "--out", str(tmp_path / "stride4")]) == 0
    assert "column_stride: 4 as given, not 8" in caplog.text
    assert "initialised 13 of 13 layers" in caplog.text
    assert load_json(tmp_path / "stride4" / "config.json")["model"]["column_stride"] == 4
    assert keras.models.load_model(tmp_path / "stride4" / "model.keras").output.shape == (None, 16, 11)
    # Without --column-stride the init model's own (4) is kept, not the default (8).
    assert train_main([*tiny, "--init", str(tmp_path / "stride4"), "--out", str(tmp_path / "again")]) == 0
    config = load_json(tmp_path / "again" / "config.json")
    assert config["model"]["column_stride"] == 4 and "column_stride" not in config["training"]["given"]
    assert set(config["training"]["given"]) == {"filters", "dense_units", "rnn_units", "width", "height"}


# ---------------------------------------------------------------- entry points


def _console_script() -> str:
    script = shutil.which("caocrvfy", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the caocrvfy console script is not installed beside this Python")
    return script


@pytest.mark.slow
@pytest.mark.parametrize("how", ["script path", "console script", "start_focal_training"])  # -m: test_interrupted
def test_train_help(how, tmp_path):
    command = {
        "script path": lambda: [sys.executable, str(REPO / "caocrvfy" / "train.py"), "--help"],
        "console script": lambda: [_console_script(), "train", "--help"],
        "start_focal_training": lambda: [sys.executable, str(REPO / "start_focal_training.py"), "--help"],
    }[how]()
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    usage = result.stdout.split("\n", 1)[1] if how == "start_focal_training" else result.stdout
    assert usage.startswith("usage: caocrvfy train")
    for option in ("--resume", "--time-limit", "--head", "(default 150;"):
        assert option in result.stdout


def test_train_options_are_grouped_with_their_defaults():
    from caocrvfy.training.config import build_parser

    text = build_parser().format_help()
    flat = " ".join(text.split())
    for option in ("--resume", "--time-limit", "--head", "--synthetic", "(default 150;", "(default 16,48,64,96)"):
        assert option in flat
    assert re.findall(r"^(\w+):$", text, re.M) == ["options", "data", "model", "distillation", "optimisation", "output"]
    options = set(re.findall(r"^  (--[a-z-]+)", text, re.M)) - {"--help"}
    assert len(options) == 47  # 54 before the redesign; 37 after; --unlabelled, --style, --min-length, the 3 of distillation, --keep-colour, --colour-key, --bn-statistics, --labelled-first since


def _start_focal_training():
    spec = importlib.util.spec_from_file_location("start_focal_training", REPO / "start_focal_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clear_caches_removes_pycache_folders(tmp_path):
    made = [tmp_path / "__pycache__", tmp_path / "pkg" / "__pycache__", tmp_path / "pkg" / "sub" / "__pycache__"]
    for folder in made:
        folder.mkdir(parents=True)
        (folder / "mod.cpython-311.pyc").write_bytes(b"\0")
    kept = tmp_path / ".venv" / "lib" / "__pycache__"
    kept.mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")

    assert _start_focal_training().clear_caches(tmp_path) == 3
    assert not any(folder.exists() for folder in made)
    assert kept.is_dir() and (tmp_path / "pkg" / "mod.py").is_file()


def test_start_focal_training_clears_then_trains_with_the_same_arguments(monkeypatch, capsys):
    module = _start_focal_training()
    calls = []
    monkeypatch.setattr(module, "clear_caches", lambda: 4)
    monkeypatch.setattr(module.subprocess, "call", lambda command: calls.append(command) or 0)
    monkeypatch.setattr(module.os, "execv", lambda path, command: calls.append(command))
    module.main(["--time-limit", "20"])
    assert calls == [[sys.executable, str(REPO / "caocrvfy" / "train.py"), "--time-limit", "20"]]
    assert "removed 4 __pycache__ folder(s)" in capsys.readouterr().out


# ---------------------------------------------------------------- native lines of the first step


NATIVE = "E0000 00:00:1796328681.996806 2535 util.cc:131] oneDNN supports DT_BOOL only on platforms with AVX-512."


def test_the_first_steps_native_lines_are_caught_and_python_lines_pass_on(capfd, monkeypatch):
    from caocrvfy.startup import CAUGHT

    monkeypatch.setattr(sys, "stderr", sys.__stderr__)  # on file descriptor 2, which capfd reads
    first = cb.FirstStepLines()
    with first:
        first.on_train_batch_begin(0)
        os.write(2, f"{NATIVE}\n12:00:00 a line of the run's own\n".encode())
        first.on_train_batch_end(0)
        os.write(2, b"after the first step\n")
    err = capfd.readouterr().err
    assert "a line of the run's own" in err and "after the first step" in err
    assert "DT_BOOL" not in err and CAUGHT[-1] == NATIVE


def test_a_failure_in_the_first_step_shows_what_was_caught(capfd, monkeypatch):
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    first = cb.FirstStepLines()
    with pytest.raises(ValueError), first:
        first.on_train_batch_begin(0)
        os.write(2, f"{NATIVE}\n".encode())
        raise ValueError("the step failed")
    assert "DT_BOOL" in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("val_size, decays", [(16, True), (24, False)])
def test_the_default_schedule_decays_on_a_cosine_under_20_validation_images(tmp_path, make_config, val_size, decays):
    # A handful of validation images cannot show a plateau: their loss is near 0 and noisy.
    cfg = make_config(tmp_path / "run", val_size=val_size, epochs=3)
    rates = [float(row["lr"]) for row in history_rows(train(cfg))]
    assert (rates[-1] < 0.5 * cfg.learning_rate) is decays
