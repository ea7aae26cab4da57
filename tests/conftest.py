"""Shared fixtures: one tiny generated folder and one tiny trained run per test session.

Everything is small on purpose (3 digits, 24x64 images, 8-unit layers) so that the whole
default run stays fast on a 2-core CPU; the trained models are not expected to read well.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from caocrvfy.data.synthetic import CaptchaSpec, generate
from caocrvfy.training import TrainConfig, train

TINY_CHARSET = "0123456789"
TINY_SPEC = CaptchaSpec(charset=TINY_CHARSET, length=3, width=64, height=24)
TINY_MODEL = {"filters": (8, 8, 8, 8), "dense_units": 8, "rnn_units": 8}


@pytest.fixture(scope="session")
def tiny_spec() -> CaptchaSpec:
    """3 digits on 64x24 images."""
    return TINY_SPEC


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory) -> Path:
    """A folder of 6 generated captchas (LABEL_INDEX.png and manifest.json); do not modify it."""
    return generate(tmp_path_factory.mktemp("generated"), 6, TINY_SPEC, workers=1)


@pytest.fixture
def site_folder(tmp_path, generated_dir) -> Path:
    """The six generated captchas renamed cap00.png ... (no label in the name) and a text file:
    a folder to label."""
    out = tmp_path / "site"
    out.mkdir()
    for i, path in enumerate(sorted(generated_dir.glob("*.png"))):
        shutil.copy(path, out / f"cap{i:02d}.png")
    (out / "notes.txt").write_text("not an image")
    return out


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """The cache of synthetic training captchas shared by every training in the session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def make_config(synthetic_cache):
    """Builds a tiny TrainConfig: 32 training and 16 validation captchas, 2 batches per epoch."""

    def make(out: Path, **overrides) -> TrainConfig:
        settings = dict(
            charset="0-9", length=3, width=64, height=24, train_size=32, val_size=16,
            cache_dir=str(synthetic_cache), batch_size=16, epochs=2, warmup_epochs=1,
            out=str(out), init="none", **TINY_MODEL,  # not the base reader, which --data starts from by default
        )
        settings.update(overrides)
        return TrainConfig(**settings)

    return make


@pytest.fixture(scope="session")
def trained_config(tmp_path_factory, make_config) -> TrainConfig:
    # The softmax head always reads exactly `length` characters, even untrained, so prediction
    # tests can check the text's length; the CTC head is trained in test_train.py.
    return make_config(tmp_path_factory.mktemp("run"), head="softmax")


@pytest.fixture(scope="session")
def trained_run(trained_config) -> Path:
    """A run folder from a 2-epoch training; tests read it and must not write into it."""
    return train(trained_config)


@pytest.fixture(scope="module", autouse=True)
def eager_steps(request):
    """In a module marked `eager_steps`, Keras's training and evaluation steps run eagerly.

    Tracing a tiny model's steps takes most of a tiny training (about 8 of 11 s here); those
    modules test what a training writes, logs and resumes, not the compiled step. The compiled
    step stays tested: test_model.py's steps, and every training in a subprocess.
    """
    if request.node.get_closest_marker("eager_steps") is None:
        yield
        return
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(before)


def pytest_configure(config):
    # Keras converts tensors with np.array(x, copy=False) internally; NumPy 2 warns on every call.
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword")
    # eager_steps: tf.data's map functions stay traced, as they should.
    config.addinivalue_line("filterwarnings", "ignore:Even though the `tf.config.experimental_run_functions_eagerly`")
