"""BatchNorm statistics recomputed from clean images (caocrvfy.training.batch_stats)."""

import keras
import numpy as np
import pytest

from caocrvfy.training import batch_stats


def tiny_model() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.RandomContrast(0.9, name="aug_contrast")(inputs)
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    outputs = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def conv_statistics(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased) variance over batch, height and width of the conv layer's outputs."""
    out = np.asarray(model.get_layer("conv")(images.astype("float32")))
    return out.mean(axis=(0, 1, 2)), out.var(axis=(0, 1, 2))


def test_the_view_leaves_out_augmentation_and_dropout_and_shares_the_rest():
    model = tiny_model()
    view = batch_stats.without_layers(model)
    names = [layer.name for layer in view.layers]
    assert "aug_contrast" not in names and "drop" not in names
    assert view.get_layer("bn") is model.get_layer("bn") and view.get_layer("conv") is model.get_layer("conv")
    assert batch_stats.batch_norm_layers(view) == [model.get_layer("bn")]


@pytest.mark.parametrize("batch_size", [64, 10])
def test_recomputed_statistics_are_those_of_the_clean_images(batch_size):
    model = tiny_model()
    images = np.random.default_rng(0).uniform(0, 255, (40, 8, 8, 1)).astype("float32")
    bn = model.get_layer("bn")
    batch_stats.recompute_statistics(batch_stats.without_layers(model), images, batch_size=batch_size)
    mean, var = conv_statistics(model, images)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
    if batch_size >= len(images):  # one batch: its variance exactly (several: the mean of theirs)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-3)
    else:
        batches = [conv_statistics(model, images[i:i + batch_size])[1] for i in range(0, len(images), batch_size)]
        np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(batches, axis=0), rtol=1e-3)
    assert bn.momentum == 0.99  # restored


def test_fit_validates_with_the_statistics_of_the_current_weights():
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (64, 8, 8, 1)).astype("float32")
    y = rng.normal(size=(64, 2)).astype("float32")
    clean = x[:32]
    model.fit(x, y, batch_size=16, epochs=2, validation_data=(x[:16], y[:16]), verbose=0,
              callbacks=[batch_stats.PreciseBatchNorm(lambda: clean)])
    mean, _ = conv_statistics(model, clean)
    # Without the callback the moving mean is a 0.99-average of 8 steps, still near its start at 0.
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)


def test_the_statistics_images_are_a_fixed_draw_of_labelled_and_unlabelled_images():
    from caocrvfy.training.datasets import TrainingData
    from caocrvfy.training.trainer import statistics_images

    labelled = np.zeros((200, 4, 4, 1), np.uint8)
    unlabelled = np.full((100, 4, 4, 1), 255, np.uint8)
    data = TrainingData(train=(labelled, np.ones((200, 3))), val=(labelled[:2], np.ones((2, 3))), charset="ab",
                        max_length=3, fixed_length=True, height=4, width=4, train_images=200, unlabelled=unlabelled)
    draw = statistics_images(data, seed=0)
    first = draw()
    assert len(first) == batch_stats.STAT_IMAGES and (first == 255).any() and (first == 0).any()
    np.testing.assert_array_equal(draw(), first)
    few = TrainingData(train=(labelled[:10], np.ones((10, 3))), val=(labelled[:2], np.ones((2, 3))), charset="ab",
                       max_length=3, fixed_length=True, height=4, width=4, train_images=10)
    assert len(statistics_images(few, seed=0)()) == 10
