import concurrent.futures

import numpy as np
import pytest

from caocrvfy.data.pipeline import ArrayBatches, StreamBatches, encode_targets, make_dataset

LABELS = np.array([[1, 2, 3], [3, 0, 0]], np.int32)  # 1-based, padded with 0


def test_ctc_targets_are_the_indices():
    np.testing.assert_array_equal(encode_targets(LABELS, "ctc", 3), LABELS)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_fixed_length_targets_are_one_hot_and_padding_is_zero(head):
    targets = np.asarray(encode_targets(LABELS, head, 3))
    np.testing.assert_array_equal(targets[0], np.eye(3))
    np.testing.assert_array_equal(targets[1], [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("head", ["ctc", "softmax"])
def test_make_dataset_batches(head):
    images = np.arange(5 * 4 * 6, dtype=np.uint8).reshape(5, 4, 6, 1)
    labels = np.array([[1, 2], [2, 1], [1, 1], [2, 2], [1, 0]], np.int32)
    batches = list(make_dataset(images, labels, head, 2, batch_size=2, shuffle=False))
    assert [len(x) for x, _ in batches] == [2, 2, 1]
    x, y = batches[0]
    np.testing.assert_array_equal(x, images[:2])
    assert np.asarray(y).shape == ((2, 2) if head == "ctc" else (2, 2, 2))


def test_shuffled_dataset_keeps_every_pair():
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1)
    labels = np.arange(6, dtype=np.int32).reshape(6, 1)
    pairs = [(int(x), int(y)) for xb, yb in make_dataset(images, labels, "ctc", 6, 4, shuffle=True, seed=1)
             for x, y in zip(np.ravel(xb), np.ravel(yb))]
    assert sorted(pairs) == [(i, i) for i in range(6)]


def test_array_batches_cover_the_data_once_per_epoch():
    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    labels = np.arange(1, 6, dtype=np.int32).reshape(5, 1)
    batches = ArrayBatches(images, labels, "ctc", 5, batch_size=2, shuffle=True, seed=0)
    assert len(batches) == 3
    seen = np.concatenate([batches[i][0].ravel() for i in range(len(batches))])
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert all(int(x) + 1 == int(y) for i in range(3) for x, y in zip(batches[i][0].ravel(), batches[i][1].ravel()))


class FakeStream:
    def sample(self, rng, n):
        return np.zeros((n, 4, 6, 1), np.uint8), np.tile(np.array([[1, 2, 0]], np.int32), (n, 1))


def test_stream_batches_draw_from_the_stream():
    batches = StreamBatches(FakeStream(), "softmax", 3, batch_size=5, steps=7)
    assert len(batches) == 7
    x, y = batches[3]
    assert x.shape == (5, 4, 6, 1)
    np.testing.assert_array_equal(y[0], [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_stream_batches_from_several_threads():
    batches = StreamBatches(FakeStream(), "ctc", 3, batch_size=4, steps=5, workers=3)
    assert batches.workers == 3 and not batches.use_multiprocessing
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        got = list(pool.map(batches.__getitem__, range(5)))
    assert all(x.shape == (4, 4, 6, 1) and y.tolist() == [[1, 2, 0]] * 4 for x, y in got)
