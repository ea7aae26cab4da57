"""Few labels: the varied generator, the base reader as the default start of `train --data`,
output layers mapped by character, `--unlabelled` pseudo-labels, `predict --labels-csv`.

All on tiny made-up folders; the base reader's accuracy is a benchmark (BENCHMARKS.md)."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from caocrvfy.cli import main as cli_main
from caocrvfy.data.charset import encode_labels, output_columns
from caocrvfy.data.folders import read_folder, unlabelled_set
from caocrvfy.data.synthetic import CaptchaSpec, draw_arrays, generate
from caocrvfy.data.fonts import font_files
from caocrvfy.data.varied import VariedDrawer, random_text
from caocrvfy.model_enhanced import build_model
from caocrvfy.training import train
from caocrvfy.training.pseudo_labels import LABELLED_SHARE, MIN_CONFIDENCE, LabelPool, threshold
from caocrvfy.training.warm_start import chosen_init, transfer_weights

pytestmark = pytest.mark.eager_steps

BASE_CHARSET = "".join(sorted(set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-=?")))


# ---------------------------------------------------------------- the varied generator


def test_fonts_are_found_that_draw_every_character():
    fonts = font_files(BASE_CHARSET)
    assert len(fonts) >= 10  # matplotlib's DejaVu and STIX families and the captcha library's at least
    assert not any("LastResort" in f for f in fonts)


def test_varied_labels_keep_to_the_lengths_and_the_characters():
    rng = np.random.default_rng(0)
    texts = [random_text(rng, BASE_CHARSET, 1, 8) for _ in range(2000)]
    assert {len(t) for t in texts} == set(range(1, 9))
    assert set("".join(texts)) <= set(BASE_CHARSET)
    assert any("+" in t or "=" in t for t in texts)
    digits_only = [random_text(rng, "0123456789", 4, 4) for _ in range(200)]
    assert all(len(t) == 4 and t.isdigit() for t in digits_only)


def test_varied_images_come_in_site_sizes():
    drawer = VariedDrawer(BASE_CHARSET)
    sizes = {drawer.image(text).size for text in drawer.labels(BASE_CHARSET, 1, 8, 40)}
    assert len(sizes) > 10
    assert all(70 <= w <= 200 and 22 <= h <= 64 for w, h in sizes)


def test_varied_arrays_are_resized_to_the_spec_with_labels_of_every_length():
    spec = CaptchaSpec(BASE_CHARSET, 8, 96, 32, style="varied", min_length=1)
    images, labels = draw_arrays(64, spec, channels=1, workers=1)
    assert images.shape == (64, 32, 96, 1) and images.dtype == np.uint8
    assert all(1 <= len(label) <= 8 for label in labels) and len({len(label) for label in labels}) > 3
    assert images.std() > 0


def test_a_varied_cache_folder_reads_back_with_its_lengths(tmp_path):
    spec = CaptchaSpec("0123456789", 5, 64, 24, style="varied", min_length=2)
    folder = generate(tmp_path / "varied", 12, spec, workers=1)
    found = read_folder(folder, charset=spec.charset)
    assert len(found.paths) == 12 and all(2 <= len(label) <= 5 for label in found.labels)
    with pytest.raises(Exception, match="another kind"):
        generate(folder, 12, dataclasses.replace(spec, style="captcha", min_length=None), workers=1)


# ---------------------------------------------------------------- starting from the base


def test_train_data_starts_from_the_base_reader_unless_told_otherwise(tmp_path, monkeypatch, make_config):
    monkeypatch.setenv("CAOCRVFY_MODELS", str(tmp_path))
    labelled = make_config(tmp_path / "run", data=str(tmp_path), init=None)
    assert chosen_init(labelled) is None  # not installed: from scratch, with a warning
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.keras").write_bytes(b"")
    assert chosen_init(labelled) == str(tmp_path / "base")
    assert chosen_init(dataclasses.replace(labelled, init="none")) is None
    assert chosen_init(dataclasses.replace(labelled, init="models/other")) == "models/other"
    assert chosen_init(dataclasses.replace(labelled, data=None)) is None  # synthetic: from scratch


def test_output_columns_map_characters_and_fall_back_to_the_other_case():
    assert output_columns("ABab+", "a+z") == [0, 3, 5, None]
    assert output_columns("0123ABC", "13bc") == [0, 2, 4, 6, 7]  # b, c only as B, C


def test_the_output_layer_keeps_the_weights_of_the_characters_both_read():
    small = dict(filters=(8, 8, 8, 8), dense_units=8, rnn_units=8, height=24, width=64, max_length=3)
    source = build_model(charset="0123ABC", **small)
    target = build_model(charset="13bc", **small)
    copied = transfer_weights(source, target, "0123ABC", "13bc")
    assert copied == sum(1 for layer in target.layers if layer.weights)
    theirs = source.get_layer("ctc_output").get_weights()[0]
    mine = target.get_layer("ctc_output").get_weights()[0]
    for unit, source_unit in enumerate([0, 2, 4, 6, 7]):
        np.testing.assert_array_equal(mine[:, unit], theirs[:, source_unit])
    fresh = build_model(charset="13bc", **small)
    assert transfer_weights(source, fresh) == copied - 1  # without the character sets: a new output layer


# ---------------------------------------------------------------- pseudo-labels


def test_the_threshold_lies_above_every_wrong_validation_reading():
    confidences = np.array([0.99, 0.95, 0.9, 0.6])
    assert threshold(confidences, np.array([True, False, True, False])) > 0.95
    assert threshold(confidences, np.array([True, True, True, True])) == MIN_CONFIDENCE
    assert threshold(confidences, np.array([True, True, True, False])) == MIN_CONFIDENCE  # 0.6 < the floor


def test_the_pool_mixes_labelled_and_pseudo_labelled_images():
    labelled = np.zeros((4, 2, 2, 1), np.uint8), np.ones((4, 3), np.int32)
    pool = LabelPool(*labelled)
    rng = np.random.default_rng(0)
    x, y = pool.sample(rng, 64)
    assert x.shape == (64, 2, 2, 1) and (y == 1).all()
    pool.set_pseudo(np.full((400, 2, 2, 1), 7, np.uint8), np.full((400, 3), 2, np.int32))
    x, y = pool.sample(rng, 4000)
    share = float((y[:, 0] == 1).mean())
    assert abs(share - LABELLED_SHARE) < 0.05  # labelled images keep their share against 100x more
    assert ((x[:, 0, 0, 0] == 7) == (y[:, 0] == 2)).all()  # each image with its own label
    pool.weight = 0.0  # the ramp's start: the labelled images alone
    assert (pool.sample(rng, 400)[1] == 1).all()
    pool.weight = 0.5
    pseudo = float((pool.sample(rng, 4000)[1][:, 0] == 2).mean())
    assert abs(pseudo - 0.5 * (1 - LABELLED_SHARE)) < 0.05  # half of their full share


def test_the_readings_share_of_a_batch_grows_with_the_budget_spent():
    from caocrvfy.model_config import ModelConfig
    from caocrvfy.training.config import RAMP_SHARE
    from caocrvfy.training.pseudo_labels import PseudoLabels
    from caocrvfy.training.validation import PredictedValidation

    config = ModelConfig(charset="0123", max_length=2, fixed_length=False, height=8, width=32)
    images = np.zeros((3, 8, 32, 1), np.uint8)
    labels = encode_labels(["12"] * 3, "0123", 2)  # what ReadsAs("12") reads
    pool = LabelPool(images, labels)
    validation = PredictedValidation((images, labels), config)
    callback = PseudoLabels(pool, images, validation, config, epochs=100)
    for each in (validation, callback):
        each.set_model(ReadsAs("12"))
    callback.on_train_begin()
    assert pool.weight == 0.0
    ramp = int(RAMP_SHARE * 100)  # epochs of 100 over which the share grows
    for epoch, weight in [(0, 1 / ramp), (ramp // 2 - 1, 0.5), (ramp - 1, 1.0), (99, 1.0)]:
        logs = {}
        callback.on_epoch_end(epoch, logs)
        assert pool.weight == pytest.approx(weight) and logs["pseudo_weight"] == pytest.approx(weight)


@pytest.fixture
def labelled_and_unlabelled(tmp_path, tiny_spec):
    labelled = generate(tmp_path / "labelled", 24, tiny_spec, workers=1)
    (labelled / "manifest.json").unlink()
    unlabelled = generate(tmp_path / "unlabelled", 20, tiny_spec, workers=1)
    (unlabelled / "manifest.json").unlink()
    for i, path in enumerate(sorted(unlabelled.glob("*.png"))):
        path.rename(unlabelled / f"img{i:03d}.png")  # no labels in the names
    (unlabelled / "broken.png").write_bytes(b"not a png")
    (unlabelled / "notes.txt").write_text("not an image")
    return labelled, unlabelled


def test_unlabelled_set_lists_images_and_skips_the_rest(labelled_and_unlabelled):
    labelled, unlabelled = labelled_and_unlabelled
    found = unlabelled_set(unlabelled)
    assert len(found.paths) == 21  # 20 images and broken.png, which load_images will skip
    assert [name for name, _ in found.skipped] == ["notes.txt"]
    with pytest.raises(Exception, match="no image files besides the labelled ones"):
        unlabelled_set(labelled, exclude=read_folder(labelled).paths)


@pytest.mark.slow  # trains for real
def test_training_with_unlabelled_images_logs_pseudo_labels(labelled_and_unlabelled, tmp_path, make_config, caplog):
    labelled, unlabelled = labelled_and_unlabelled
    cfg = make_config(tmp_path / "run", data=str(labelled), unlabelled=str(unlabelled), charset=None,
                      height=24, epochs=2, head="ctc", augment="off")
    with caplog.at_level("INFO"):
        run = train(cfg)
    text = caplog.text
    assert "broken.png" in text and "notes.txt" in text  # skipped, and listed
    assert "20 unlabelled images, 2 skipped" in text
    assert "pseudo-labels:" in text
    with (run / "history.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and "pseudo_labels" in rows[0] and "pseudo_threshold" in rows[0]
    assert "val_greedy_full_match" in rows[0]  # fixed-length CTC: validation read as predict reads
    assert all(float(row["pseudo_threshold"]) >= MIN_CONFIDENCE for row in rows)


def test_unlabelled_needs_data():
    from caocrvfy.training.config import config_from_args

    with pytest.raises(SystemExit):
        config_from_args(["--unlabelled", "somewhere"])


# ---------------------------------------------------------------- predict --labels-csv


def test_predict_writes_a_labels_csv_most_doubtful_first(tmp_path, trained_run, generated_dir):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(generated_dir.glob("*.png")):
        (images / path.name.split("_")[1]).write_bytes(path.read_bytes())  # names without labels
    (images / "broken.png").write_bytes(b"nope")
    out = images / "labels.csv"
    code = cli_main(["predict", "--model", str(trained_run), str(images), "--labels-csv", str(out)])
    assert code == 1  # one file could not be read; the rest were
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["file", "label", "confidence"]
    body = rows[1:]
    assert len(body) == 6 and "broken.png" not in {r[0] for r in body}
    confidences = [float(r[2]) for r in body]
    assert confidences == sorted(confidences)
    assert all(len(r[1]) == 3 for r in body)
    assert {r[0] for r in body} == {p.name for p in images.glob("*.png")} - {"broken.png"}
    back = read_folder(images)  # the file trains as it is, once corrected
    assert len(back.paths) == 6


class ReadsAs:
    """A stand-in model for a CTC reader of `0123` over 8 steps whose output reads `text` for
    every image, sure of it."""

    def __init__(self, text: str, steps: int = 8):
        self.output = np.full((steps, 5), 1e-6, np.float32)
        self.output[np.arange(steps), [1 + int(c) for c in text] + [0] * (steps - len(text))] = 1.0

    def predict(self, images, batch_size, verbose):
        return np.stack([self.output for _ in images])


def test_readings_longer_than_the_labels_are_wrong_and_never_trained_on():
    from caocrvfy.model_config import ModelConfig
    from caocrvfy.training.pseudo_labels import PseudoLabels
    from caocrvfy.training.validation import PredictedValidation

    config = ModelConfig(charset="0123", max_length=2, fixed_length=False, height=8, width=32)
    images = np.zeros((3, 8, 32, 1), np.uint8)
    pool = LabelPool(images, np.array([[2, 3]] * 3, np.int32))
    validation = PredictedValidation((images, np.array([[2, 3]] * 3, np.int32)), config)
    callback = PseudoLabels(pool, images, validation, config)
    for each in (validation, callback):  # as fit sets the model of every callback
        each.set_model(ReadsAs("123"))  # longer than any label
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs["pseudo_labels"] == 0 and len(pool.pseudo_images) == 0
    assert logs["pseudo_threshold"] > 0.99  # the three validation readings were wrong, and sure of it
    assert [p.text for p in callback.readings] == ["123"] * 3 and not callback.kept.any()  # what a trace reads


def test_labelled_first_trains_that_share_of_the_budget_on_the_labelled_images_alone():
    from caocrvfy.model_config import ModelConfig
    from caocrvfy.training.pseudo_labels import PseudoLabels
    from caocrvfy.training.validation import PredictedValidation

    config = ModelConfig(charset="0123", max_length=2, fixed_length=False, height=8, width=32)
    images = np.zeros((3, 8, 32, 1), np.uint8)
    labels = encode_labels(["12"] * 3, "0123", 2)  # what ReadsAs("12") reads

    def epoch_end(epoch, share=0.3, **budget):
        pool = LabelPool(images, labels)
        validation = PredictedValidation((images, labels), config)
        callback = PseudoLabels(pool, images, validation, config, labelled_first=share, **budget)
        for each in (validation, callback):
            each.set_model(ReadsAs("12"))
        callback.on_train_begin()
        logs = {}
        callback.on_epoch_end(epoch, logs)
        return logs["pseudo_labels"], len(pool.pseudo_images)

    assert epoch_end(0, epochs=10) == (0, 0)  # epoch 1 of 10: still the labelled images alone
    assert epoch_end(2, epochs=10) == (3, 3)  # epoch 3 of 10
    assert epoch_end(5, minutes=10.0) == (0, 0)  # seconds into a 10-minute run
    assert epoch_end(5, minutes=10.0, already=0.3 * 600 + 1) == (3, 3)  # resumed after the share
    assert epoch_end(0, share=0.0, epochs=10) == (3, 3)  # the default: readings from the first epoch
    assert epoch_end(0, share=0.0, minutes=10.0) == (3, 3)


@pytest.mark.parametrize("labels, widened", [
    (["ab12", "ba21"], "0123456789abcdefghijklmnopqrstuvwxyz"),  # lower case and digits: the base's of both
    (["AB", "CA"], "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    (["12", "34"], "0123456789"),
    (["1+2=?"], "+0123456789=?"),  # symbols only from the labels
])
def test_a_few_labels_take_the_init_models_letters_and_digits_in_their_case(labels, widened):
    from caocrvfy.training.datasets import site_alphabet

    assert site_alphabet(labels, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-=?") == widened


# ---------------------------------------------------------------- one-case labels, both cases drawn


@pytest.mark.parametrize("labels, init, merged", [
    (["ab12", "ba21"], "0123456789abcdefABCDEF", True),  # lower-case labels, an init that tells a from A
    (["AB", "CA"], "ABCDabcd", True),
    (["aB"], "ABab", False),  # labels of both cases: the cases are the site's
    (["12", "34"], "0123456789abAB", False),  # no letters
    (["ab"], "0123456789ab", False),  # the init reads one case only
    (["ab"], None, False),  # from scratch
])
def test_one_case_labels_merge_the_init_models_two_cases(labels, init, merged):
    from caocrvfy.training.datasets import merges_case

    assert merges_case(labels, init) is merged


SMALL = {"filters": (8, 8, 8, 8), "dense_units": 8, "rnn_units": 8, "height": 24, "width": 64, "max_length": 3}


def test_a_merged_model_reads_each_glyph_with_the_init_unit_for_its_case_and_adds_the_two(tmp_path):
    from caocrvfy.model_config import ModelConfig
    from caocrvfy.model_enhanced import load_saved_model, model_head

    source_config = ModelConfig(charset="01ABab", **SMALL)
    config = ModelConfig(charset="01ab", merge_case=True, **SMALL)
    assert config.unit_charset == "01ABab"
    source, model = build_model(source_config), build_model(config)
    assert model_head(model) == "ctc" and model.output_shape == (None, 8, 5)
    assert transfer_weights(source, model, source_config.unit_charset, config.unit_charset) == \
        sum(1 for layer in model.layers if layer.trainable_weights)
    np.testing.assert_array_equal(model.get_layer("ctc_output").get_weights()[0],
                                  source.get_layer("ctc_output").get_weights()[0])  # A keeps A's unit
    images = np.random.default_rng(0).integers(0, 255, (2, 24, 64, 1), dtype=np.uint8)
    theirs, mine = source.predict(images, verbose=0), model.predict(images, verbose=0)
    # source units: blank 0 1 A B a b; merged: blank 0 1 a b
    np.testing.assert_allclose(mine, np.stack([theirs[..., 0], theirs[..., 1], theirs[..., 2],
                                               theirs[..., 3] + theirs[..., 5], theirs[..., 4] + theirs[..., 6]],
                                              axis=-1), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(load_saved_model(tmp_path / "model.keras").predict(images, verbose=0), mine,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="merge_case"):
        ModelConfig(charset="01ab", merge_case=True, head="softmax", **SMALL).check()


def test_lower_case_labels_with_a_two_case_init_train_a_merged_model(tmp_path, make_config):
    from PIL import Image

    from caocrvfy.training.datasets import load_data

    for i, label in enumerate(["ab1", "ba2", "aa3", "bb4"]):
        Image.new("L", (64, 24), 200 + i).save(tmp_path / f"{label}_{i}.png")
    cfg = make_config(tmp_path / "run", data=str(tmp_path), charset=None, height=24)
    data = load_data(cfg, 1, init_charset="0123456789abcdefABCDEF")
    assert data.merge_case and data.charset == "0123456789abcdef"
    assert not load_data(cfg, 1, init_charset="0123456789abcdef").merge_case
