"""Interrupted trainings: a kill at any moment leaves a run folder that --resume continues.

The fast tests crash the checkpoint code at each of its file operations in turn; the slow ones
SIGKILL and SIGTERM real `python -m caocrvfy.train` processes on the tiny synthetic set of
conftest.py, at random moments while they save, and fail a training in-process.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from caocrvfy.errors import DataError
from caocrvfy.files import write_json_atomic
from caocrvfy.training import callbacks as cb
from caocrvfy.training import interrupts, trainer
from caocrvfy.training.config import config_from_args

pytestmark = pytest.mark.eager_steps

STEPS = 2  # optimizer steps per epoch: 32 training captchas in batches of 16
TEMPORARY = ("checkpoint.partial", "checkpoint.old", "model-partial.keras")


def tiny_args(cache: Path) -> list[str]:
    """conftest.make_config's run on the command line, with early stopping out of the way."""
    return ["--charset", "0-9", "--length", "3", "--width", "64", "--height", "24", "--train-size", "32",
            "--val-size", "16", "--cache-dir", str(cache), "--filters", "8,8,8,8", "--dense-units", "8",
            "--rnn-units", "8", "--batch-size", "16", "--warmup-epochs", "1",
            "--patience", "1000"]  # full-match stays 0 on this set: no early stop before the signal


def resumable(run: Path) -> tuple[Path, dict]:
    """The folder and state a --resume must read, by the documented rule (checkpoint/, else
    checkpoint.old/, else the top of a run folder written before checkpoint/)."""
    for folder in (run / "checkpoint", run / "checkpoint.old", run):
        if (folder / "state.json").is_file():
            return folder, json.loads((folder / "state.json").read_text())
    raise AssertionError(f"{run} holds no checkpoint: {sorted(os.listdir(run))}")


def history_epochs(run: Path) -> list[int]:
    with (run / "history.csv").open(newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def assert_whole(run: Path) -> dict:
    """The run folder after a kill: a checkpoint whose model is the one its state names (the
    optimizer has taken exactly the state's epochs of steps), a loadable best model, a config."""
    folder, state = resumable(run)
    last = keras.models.load_model(folder / "last.keras")
    assert int(keras.ops.convert_to_numpy(last.optimizer.iterations)) == state["epoch"] * STEPS, state["epoch"]
    keras.models.load_model(run / "model.keras", compile=False)
    json.loads((run / "config.json").read_text())
    return state


def assert_finished(run: Path, epochs: int) -> None:
    """A run folder after a training that ended well."""
    assert history_epochs(run) == list(range(epochs))  # each epoch logged once
    state = assert_whole(run)
    assert state["epoch"] == epochs and resumable(run)[0] == run / "checkpoint"
    assert not [name for name in os.listdir(run) if "partial" in name or name.endswith(".old")]
    assert not (run / "last.keras").exists() and not (run / "state.json").exists()
    assert not (run / trainer.FAILED).exists() and (run / "metrics.json").is_file()
    if state.get("best_epoch") == state["epoch"]:  # model.keras is the last epoch's
        best = keras.models.load_model(run / "model.keras", compile=False)
        last = keras.models.load_model(run / "checkpoint" / "last.keras", compile=False)
        for a, b in zip(best.get_weights(), last.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the checkpoint code, crashed step by step


class Crash(Exception):
    """Stands for a kill: the operation it interrupts is left half done."""


_SAVE = keras.Model.save


def _half_save(model, path, *args, **kwargs):  # a model file cut short
    _SAVE(model, path, *args, **kwargs)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def _half_write(path, text, *args, **kwargs):
    Path.write_bytes(path, text[: len(text) // 2].encode())


def _half_rmtree(path, *args, **kwargs):  # one file removed of several
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if os.path.isdir(path) else []
    for file in files[:1]:
        os.remove(file)


def crash_at(patch: pytest.MonkeyPatch, step: int | None) -> itertools.count:
    """Makes the `step`-th file operation of the checkpoint code fail (None: count them only)."""
    count = itertools.count()

    def wrap(owner, name, half=None):
        original = getattr(owner, name)

        def operation(*args, **kwargs):
            if next(count) == step:
                if half is not None:
                    half(*args, **kwargs)
                raise Crash(name)
            return original(*args, **kwargs)

        patch.setattr(owner, name, operation)

    wrap(keras.Model, "save", half=_half_save)
    wrap(Path, "write_text", half=_half_write)
    wrap(Path, "mkdir")
    wrap(Path, "unlink")
    wrap(os, "replace")
    wrap(shutil, "rmtree", half=_half_rmtree)
    wrap(os, "fsync")
    return count


def marked_model(value: float) -> keras.Model:
    """A small compiled model with optimizer state, every weight set to `value` (its epoch)."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    model.fit(np.ones((2, 2)), np.ones((2, 1)), epochs=1, verbose=0)
    return mark(model, value)


def mark(model: keras.Model, value: float) -> keras.Model:
    model.set_weights([np.full_like(w, value) for w in model.get_weights()])
    return model


def mark_of(path: Path) -> float:
    return float(keras.models.load_model(path).get_weights()[0].flat[0])


def end_epochs(run: Path, model: keras.Model, epochs: range) -> None:
    """Runs the Checkpoints callback as fit would at the end of each of `epochs` (1-based),
    each one better than the last, the model marked with the epoch."""
    early = cb.ResumableEarlyStopping(monitor=cb.MONITOR, mode="max", best_model=run / "model.keras")
    plateau = cb.ResumableReduceLROnPlateau(monitor="val_loss")
    checkpoints = cb.Checkpoints(run, early, plateau)
    for callback in (early, plateau, checkpoints):
        callback.set_model(model)
        callback.on_train_begin()
    for epoch in epochs:
        checkpoints.on_epoch_end(epoch - 1, {cb.MONITOR: 0.5, "val_loss": 1 / epoch})


def test_a_crash_at_any_step_of_saving_leaves_a_whole_checkpoint(tmp_path):
    model, probe = marked_model(1), tmp_path / "probe"
    probe.mkdir()
    end_epochs(probe, model, range(1, 2))
    with pytest.MonkeyPatch.context() as patch:
        counter = crash_at(patch, None)
        end_epochs(probe, mark(model, 2), range(2, 3))
        steps = next(counter)
    assert steps >= 8  # the saves, the renames, the flushes and the removals were all counted

    outcomes = {}
    for step in range(steps):
        run = tmp_path / f"crash-{step}"
        run.mkdir()
        end_epochs(run, mark(model, 1), range(1, 2))
        with pytest.MonkeyPatch.context() as patch:
            crash_at(patch, step)
            with pytest.raises(Crash):
                end_epochs(run, mark(model, 2), range(2, 3))
        folder, state = resumable(run)
        assert mark_of(folder / "last.keras") == state["epoch"], step  # the model is the one its state names
        assert mark_of(run / "model.keras") in (1, 2), step
        outcomes[step] = state["epoch"]
    assert set(outcomes.values()) == {1, 2}  # early crashes keep epoch 1, late ones already have epoch 2

    for step, epoch in outcomes.items():  # what a resume, or the end of an interrupted run, makes of it
        run = tmp_path / f"crash-{step}"
        checkpoint = cb.settle(run)
        assert checkpoint.state["epoch"] == epoch and sorted(os.listdir(run)) == ["checkpoint", "model.keras"], step
        assert mark_of(run / "model.keras") == checkpoint.state["best_epoch"] == epoch, step
        end_epochs(run, mark(model, 3), range(3, 4))  # and the next save goes through
        assert mark_of(cb.find_checkpoint(run).model_path) == 3


def test_find_checkpoint_falls_back_and_refuses_a_mismatched_pair(tmp_path):
    model = marked_model(1)
    cb.save_checkpoint(model, {"epoch": 1}, tmp_path)
    # Killed between the two renames: only checkpoint.old/ is whole.
    os.replace(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    assert cb.find_checkpoint(tmp_path).folder == tmp_path / "checkpoint.old"
    cb.tidy_checkpoints(tmp_path)
    assert cb.find_checkpoint(tmp_path).folder == tmp_path / "checkpoint"
    # A last.keras that is not the one state.json was written for is never resumed from.
    with (tmp_path / "checkpoint" / "last.keras").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(DataError, match="not the file its state.json"):
        cb.find_checkpoint(tmp_path)


def test_run_folders_from_before_checkpoint_still_resume(tmp_path):
    (tmp_path / "last.keras").write_bytes(b"model")
    (tmp_path / "state.json").write_text('{"epoch": 4, "learning_rate": 0.001}')
    found = cb.find_checkpoint(tmp_path)
    assert (found.folder, found.state["epoch"]) == (tmp_path, 4)
    assert cb.find_checkpoint(tmp_path / "missing") is None
    cb.save_checkpoint(marked_model(5), {"epoch": 5}, tmp_path)  # the first save of the resumed run
    assert not (tmp_path / "last.keras").exists() and not (tmp_path / "state.json").exists()
    assert cb.find_checkpoint(tmp_path).state["epoch"] == 5


def test_trim_history_keeps_the_checkpoints_epochs(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,3.0\n1,2.0\n2,1.0\n3,0.5")  # the last row cut short by a kill
    cb.trim_history(path, 2)
    assert path.read_text() == "epoch,loss\n0,3.0\n1,2.0\n"
    cb.trim_history(path, 5)
    assert path.read_text() == "epoch,loss\n0,3.0\n1,2.0\n"


def test_history_keeps_its_columns_named_when_a_resumed_run_logs_other_values(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\r\n0,3.0,3.5\r\n1,2.0,2.5\r\n")  # as Keras wrote it
    logger = cb.HistoryLogger(str(path), append=True)
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 1.0, "val_greedy": 0.5, "val_loss": 1.5})
    logger.on_epoch_end(3, {"loss": 0.5, "val_greedy": 0.75, "val_loss": 1.0})
    logger.on_train_end()
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["loss"] for r in rows] == ["3.0", "2.0", "1.0", "0.5"]
    assert [r["val_loss"] for r in rows] == ["3.5", "2.5", "1.5", "1.0"]
    assert [r["val_greedy"] for r in rows] == ["", "", "0.5", "0.75"]
    logger = cb.HistoryLogger(str(path), append=True)  # the same values again: appended as they are
    logger.on_train_begin()
    logger.on_epoch_end(4, {"loss": 0.25, "val_greedy": 1.0, "val_loss": 0.5})
    logger.on_train_end()
    assert path.read_text().splitlines()[0] == "epoch,loss,val_greedy,val_loss"
    assert path.read_text().splitlines()[-1] == "4,0.25,1.0,0.5"


def test_repair_best_copies_the_checkpoint_when_it_is_the_best_epoch(tmp_path):
    cb.save_checkpoint(marked_model(2), {"epoch": 2, "best_epoch": 2}, tmp_path)
    cb.save_model_atomic(marked_model(1), tmp_path / "model.keras")  # killed before epoch 2's best was written
    cb.repair_best(cb.find_checkpoint(tmp_path), tmp_path / "model.keras")
    assert keras.models.load_model(tmp_path / "model.keras").get_weights()[0].flat[0] == 2
    cb.save_checkpoint(marked_model(3), {"epoch": 3, "best_epoch": 2}, tmp_path)
    cb.repair_best(cb.find_checkpoint(tmp_path), tmp_path / "model.keras")  # an older best is left alone
    assert keras.models.load_model(tmp_path / "model.keras").get_weights()[0].flat[0] == 2


def test_after_a_failure_the_run_folder_is_removed_or_marked(tmp_path):
    made, kept, resumable_run = tmp_path / "made", tmp_path / "kept", tmp_path / "resumable"
    for run in (made, kept, resumable_run):
        run.mkdir()
        (run / "config.json").write_text("{}")
        (run / "model-partial.keras").write_bytes(b"half")
    trainer.after_failure(made, created=True, finished_epoch=False, exc=RuntimeError("boom"))
    assert not made.exists()
    trainer.after_failure(kept, created=False, finished_epoch=False, exc=RuntimeError("out of\nmemory"))
    assert sorted(os.listdir(kept)) == ["FAILED", "config.json"]
    assert (kept / "FAILED").read_text() == "training failed: RuntimeError: out of memory\n"
    cb.save_checkpoint(marked_model(1), {"epoch": 1}, resumable_run)
    trainer.after_failure(resumable_run, created=True, finished_epoch=True, exc=KeyboardInterrupt())
    assert sorted(os.listdir(resumable_run)) == ["checkpoint", "config.json"]  # interrupted: no FAILED
    trainer.after_failure(resumable_run, created=True, finished_epoch=True, exc=OSError("disk full"))
    reason = (resumable_run / "FAILED").read_text()
    assert reason == f"training failed: OSError: disk full; continue with --resume {resumable_run}\n"


class Unhandled(Exception):
    """SIGTERM reached the handler that was there before main()."""


def _unhandled(signum, frame):
    raise Unhandled


def test_sigterm_ends_main_like_ctrl_c(monkeypatch):
    from caocrvfy import train as entry

    def terminated_training(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not interrupt the training")

    def interrupted_training(cfg):
        raise KeyboardInterrupt

    # Without main()'s own handler this one fails the test, instead of ending pytest.
    previous = signal.signal(signal.SIGTERM, _unhandled)
    try:
        monkeypatch.setattr(trainer, "train", terminated_training)
        assert entry.main(["--epochs", "1"]) == 143
        assert signal.getsignal(signal.SIGTERM) is _unhandled  # put back afterwards
        monkeypatch.setattr(trainer, "train", interrupted_training)
        assert entry.main(["--epochs", "1"]) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)


class SignalledWhileFinalized:
    """An object whose finalizer receives `signum`: Python runs the handler inside `__del__`,
    prints its exception as "Exception ignored" and drops it, as in TensorFlow's and the zip
    writer's finalizers during a save."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        sum(range(100))  # the handler runs between these bytecodes


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("signum, interrupt", [(signal.SIGTERM, interrupts.Terminated),
                                               (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_a_finalizer_swallowed_is_raised_at_the_next_safe_point(signum, interrupt):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # else SIGINT would end pytest
        pytest.skip("pytest runs with Ctrl-C ignored (started in the background by a shell without job "
                    "control), so caocrvfy leaves SIGINT alone")
    previous = signal.signal(signal.SIGTERM, _unhandled)
    try:
        with interrupts.signals_as_interrupts():
            SignalledWhileFinalized(signum)  # made and dropped at once: its finalizer runs here
            with pytest.raises(interrupt) as raised:
                interrupts.raise_pending()
            assert type(raised.value) is interrupt  # Ctrl-C is not reported as SIGTERM
            interrupts.raise_pending()  # raised once
        assert signal.getsignal(signal.SIGTERM) is _unhandled
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def signalled_then_masked(signum: int) -> None:
    """Receives `signum`, then raises another error in the interrupt's place, as TensorFlow does
    when a SIGTERM comes while it traces a function (its graph stack unwinds out of order)."""
    try:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends
    finally:
        raise AssertionError("Nesting violated for default stack of FuncGraph objects")


def test_an_error_raised_in_place_of_a_signal_is_raised_as_the_signal():
    previous = signal.signal(signal.SIGTERM, _unhandled)
    try:
        with pytest.raises(interrupts.Terminated) as raised, interrupts.signals_as_interrupts():
            signalled_then_masked(signal.SIGTERM)
        assert isinstance(raised.value.__cause__, AssertionError)  # the error is kept as its cause
        with pytest.raises(AssertionError), interrupts.signals_as_interrupts():  # no signal: the error itself
            raise AssertionError("a real one")
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- real processes, killed


@pytest.fixture(scope="module")
def filled_cache(synthetic_cache, make_config, tmp_path_factory) -> Path:
    """The shared cache with the tiny set drawn, so that the timed processes only read it."""
    from caocrvfy.training.datasets import load_data

    load_data(make_config(tmp_path_factory.mktemp("unused")), channels=1)
    return synthetic_cache


def start_training(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("a") as fh:
        process = subprocess.Popen([sys.executable, "-m", "caocrvfy.train", *args], stdout=fh,
                                   stderr=subprocess.STDOUT)
    # On a busy machine the training could otherwise keep this process from watching the folder.
    os.setpriority(os.PRIO_PROCESS, process.pid, 10)
    return process


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 90.0, poll: float = 0.0005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the training ended ({process.returncode}) first:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(poll)


def epoch_saved(run: Path) -> int:
    try:
        return resumable(run)[1]["epoch"]
    except (AssertionError, OSError, ValueError):  # none yet, or caught between two renames
        return 0


def kill_while_saving(process: subprocess.Popen, run: Path, log: Path, after_epoch: int, delay: float,
                      how: signal.Signals = signal.SIGKILL) -> str:
    """Once a checkpoint later than `after_epoch` is saved, sends `how` `delay` seconds after
    the next save begins (a temporary name appears); returns where the save was, as the folder shows."""
    def saving() -> bool:
        return any("partial" in name for name in os.listdir(run))

    wait_for(lambda: epoch_saved(run) > after_epoch, process, log, poll=0.02)
    wait_for(lambda: not saving(), process, log)  # that epoch's save is over
    wait_for(saving, process, log)
    time.sleep(delay)
    assert process.poll() is None, f"the training ended before the signal:\n{log.read_text()[-3000:]}"
    process.send_signal(how)
    process.wait(timeout=90)
    names = set(os.listdir(run))
    if how != signal.SIGKILL:
        return "signalled"
    if "checkpoint.partial" in names:
        return "writing checkpoint.partial"
    if "checkpoint" not in names:
        return "between the two renames"
    if "checkpoint.old" in names:
        return "removing checkpoint.old"
    if "model-partial.keras" in names:
        return "writing model.keras"
    return "after saving"


SAVE_SECONDS = 0.16  # measured: writing the checkpoint and the best model takes about this long here
KILLS = 4


@pytest.mark.slow
def test_sigkill_while_saving_then_resume_continues(tmp_path, filled_cache):
    # One kill in each quarter of a save, at a random point of it (each training process costs
    # seconds to start, so the kills are spread rather than many).
    rng = random.Random(0)
    run, log = tmp_path / "run", tmp_path / "train.log"
    process = start_training([*tiny_args(filled_cache), "--epochs", "100", "--out", str(run)], log)
    where, epoch = [], 0
    for quarter in range(KILLS):
        delay = (quarter + rng.random()) / KILLS * SAVE_SECONDS
        where.append(kill_while_saving(process, run, log, epoch, delay))
        assert process.returncode == -signal.SIGKILL
        epoch = assert_whole(run)["epoch"]
        log.write_text("")
        process = start_training(["--resume", str(run), "--epochs", "100" if len(where) < KILLS
                                  else str(epoch + 2)], log)
        wait_for(lambda line=f"resuming after epoch {epoch} ": line in log.read_text(), process, log, poll=0.05)
    assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
    assert_finished(run, epoch + 2)
    print(f"SIGKILL at {where}")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before the first epoch", "while saving"])
def test_sigterm_ends_training_like_ctrl_c(when, tmp_path, filled_cache):
    run, log = tmp_path / "run", tmp_path / "train.log"
    process = start_training([*tiny_args(filled_cache), "--epochs", "100", "--out", str(run)], log)
    if when == "before the first epoch":
        wait_for(lambda: (run / "config.json").exists(), process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 143, log.read_text()[-3000:]
        assert not run.exists()  # no epoch finished: no run folder left behind
        return
    kill_while_saving(process, run, log, 1, random.Random(7).uniform(0, SAVE_SECONDS), signal.SIGTERM)
    assert process.returncode == 143, log.read_text()[-3000:]
    assert "interrupted: the last finished epoch is saved" in log.read_text()
    epoch = assert_whole(run)["epoch"]
    assert resumable(run)[0] == run / "checkpoint" and not (set(os.listdir(run)) & set(TEMPORARY))
    assert history_epochs(run) == list(range(epoch))  # an epoch logged but not saved is dropped
    best = keras.models.load_model(run / "model.keras")  # kept, scored, and without its optimizer
    assert getattr(best, "optimizer", None) is None and (run / "metrics.json").is_file()
    log.write_text("")
    resumed = subprocess.run([sys.executable, "-m", "caocrvfy.train", "--resume", str(run), "--epochs",
                              str(epoch + 1)], capture_output=True, text=True, timeout=120, check=False)
    assert resumed.returncode == 0 and f"resuming after epoch {epoch} " in resumed.stderr, resumed.stderr[-3000:]
    assert_finished(run, epoch + 1)


# ---------------------------------------------------------------- in-process trainings


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["checkpoint", "before checkpoint/"])
def test_resume_restores_the_optimizer_variables(layout, tmp_path, make_config, monkeypatch):
    def variables(model):  # in a fixed order: the step, the rate, then each weight's moments
        return [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]

    saves = []  # the optimizer's variables as each epoch's checkpoint was saved
    end_epoch = cb.Checkpoints.on_epoch_end

    def recording_end(self, epoch, logs=None):
        saves.append(variables(self.model))
        end_epoch(self, epoch, logs)

    monkeypatch.setattr(cb.Checkpoints, "on_epoch_end", recording_end)
    run = trainer.train(make_config(tmp_path / "run", epochs=1))
    if layout == "before checkpoint/":  # as the code before this change wrote it
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        (run / "state.json").write_text(json.dumps({k: v for k, v in state.items()
                                                    if k not in ("last_keras", "best_epoch")}))
        os.replace(run / "checkpoint" / "last.keras", run / "last.keras")
        shutil.rmtree(run / "checkpoint")

    loaded = {}
    model_for = trainer.model_for_run

    def recording_model_for(*args, **kwargs):
        model, epoch = model_for(*args, **kwargs)
        loaded.update(variables=variables(model), names=[v.name for v in model.optimizer.variables], epoch=epoch)
        return model, epoch

    monkeypatch.setattr(trainer, "model_for_run", recording_model_for)
    trainer.train(config_from_args(["--resume", str(run), "--epochs", "2"]))
    saved = saves[0]  # epoch 1's, the checkpoint the resume reads
    assert loaded["epoch"] == 1 and loaded["names"][:2] == ["iteration", "learning_rate"]
    assert len(saved) == len(loaded["variables"]) > 2  # the moments too, not only the step and the rate
    assert int(loaded["variables"][0]) == STEPS
    for name, before, after in zip(loaded["names"], saved, loaded["variables"], strict=True):
        np.testing.assert_array_equal(after, before, err_msg=name)
    assert_finished(run, 2)


def fail_at_epoch(monkeypatch, epoch: int, error: BaseException) -> None:
    """Makes the training fail at the end of `epoch` (0-based), before that epoch is saved."""
    log_epoch = cb.EpochLog.on_epoch_end

    def failing(self, index, logs=None):
        if index == epoch:
            raise error
        log_epoch(self, index, logs)

    monkeypatch.setattr(cb.EpochLog, "on_epoch_end", failing)


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["error in fit", "interrupt in fit", "error before fit"])
def test_a_run_that_ends_before_its_first_epoch_leaves_no_folder(failure, tmp_path, make_config, monkeypatch):
    if failure == "error before fit":
        def no_time(*args, **kwargs):
            raise DataError("no time")

        monkeypatch.setattr(trainer, "training_minutes", no_time)
    else:
        fail_at_epoch(monkeypatch, 0, KeyboardInterrupt() if failure == "interrupt in fit" else RuntimeError("boom"))
    run = tmp_path / "run"
    with pytest.raises((RuntimeError, KeyboardInterrupt, DataError)):
        trainer.train(make_config(run, epochs=2))
    assert not run.exists()
    # A folder that was there before is not removed, and says why it holds no model.
    run.mkdir()
    with pytest.raises((RuntimeError, KeyboardInterrupt, DataError)):
        trainer.train(make_config(run, epochs=2))
    if failure == "interrupt in fit":
        assert not (run / trainer.FAILED).exists()
    else:
        assert (run / trainer.FAILED).read_text().startswith("training failed: ")
    assert not (set(os.listdir(run)) & set(TEMPORARY))


@pytest.mark.slow
def test_a_signal_masked_by_another_error_in_fit_ends_the_training_as_an_interrupt(tmp_path, make_config,
                                                                                   monkeypatch):
    log_epoch = cb.EpochLog.on_epoch_end

    def masked_at_epoch_1(self, index, logs=None):
        log_epoch(self, index, logs)
        if index == 1:
            signalled_then_masked(signal.SIGTERM)

    monkeypatch.setattr(cb.EpochLog, "on_epoch_end", masked_at_epoch_1)
    run = tmp_path / "run"
    with interrupts.signals_as_interrupts(), pytest.raises(interrupts.Terminated):
        trainer.train(make_config(run, epochs=5))
    assert assert_whole(run)["epoch"] == 1  # the epoch in progress dropped, as after any interrupt
    assert (run / "metrics.json").is_file() and not (run / trainer.FAILED).exists()  # scored, not failed


@pytest.mark.slow
def test_a_run_that_fails_after_an_epoch_is_marked_and_resumable(tmp_path, make_config, monkeypatch):
    fail_at_epoch(monkeypatch, 1, RuntimeError("disk\nfull"))
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        trainer.train(make_config(run, epochs=3))
    reason = (run / trainer.FAILED).read_text()
    assert reason == f"training failed: RuntimeError: disk full; continue with --resume {run}\n"  # one line
    assert assert_whole(run)["epoch"] == 1
    monkeypatch.undo()
    trainer.train(config_from_args(["--resume", str(run)]))
    assert_finished(run, 3)  # FAILED removed by the run that ended well


def test_every_file_and_folder_is_flushed_to_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    # A rename is only durable after the data it names is on disk: record the order.
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.realpath(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(cb.os, "fsync", fsync)
    monkeypatch.setattr(cb.os, "replace", replace)
    model = marked_model(1.0)
    cb.save_checkpoint(model, {"epoch": 1}, tmp_path)
    cb.save_checkpoint(model, {"epoch": 2}, tmp_path)  # the second swaps the first out
    cb.save_model_atomic(model, tmp_path / "model.keras")
    write_json_atomic({"a": 1}, tmp_path / "metrics.json")
    flushed = set()
    for kind, path in calls:
        if kind == "fsync":
            flushed.add(path)
            continue
        source = Path(path)
        if source.name == cb.CHECKPOINT:  # the old checkpoint moving aside: flushed when it was written
            continue
        assert path in flushed, f"{path} renamed before it was flushed"
        if source.is_dir():
            assert {str(p) for p in source.iterdir()} <= flushed, f"{path}'s files renamed unflushed"
    assert sum(kind == "replace" for kind, _ in calls) >= 4
    assert str(tmp_path) in flushed  # the renames themselves flushed in the run folder


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_lost_in_a_finalizer_while_saving_still_ends_the_training(tmp_path, make_config, monkeypatch):
    save = cb.save_checkpoint

    def save_then_signal_in_a_finalizer(model, state, run_dir):
        save(model, state, run_dir)
        if state["epoch"] == 1:
            SignalledWhileFinalized(signal.SIGTERM)

    monkeypatch.setattr(cb, "save_checkpoint", save_then_signal_in_a_finalizer)
    run = tmp_path / "run"
    with interrupts.signals_as_interrupts(), pytest.raises(interrupts.Terminated):
        trainer.train(make_config(run, epochs=5))
    assert assert_whole(run)["epoch"] == 1 and history_epochs(run) == [0]  # ended after epoch 1's save
    assert (run / "metrics.json").is_file()  # the best model scored, as after any interrupt
