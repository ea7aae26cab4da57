"""Colour keys ("type the red characters"): parsing, masking, reading and training with a key,
and the two-colour generator."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caocrvfy.cli import main as cli_main
from caocrvfy.data.colour_captchas import ColourCaptchaDrawer
from caocrvfy.data.colour_keys import DEFAULT_TOLERANCE, ColourKey, optional_key, parse_pair
from caocrvfy.data.folders import MANIFEST
from caocrvfy.data.images import open_image
from caocrvfy.data.synthetic import CaptchaSpec, cache_folder
from caocrvfy.errors import DataError
from caocrvfy.inference import Predictor
from caocrvfy.model_config import ModelConfig
from caocrvfy.train import main as train_main
from caocrvfy.training.config import config_from_args

pytestmark = pytest.mark.eager_steps

RED, DARK_RED, LIGHT_RED, BLUE, WHITE, GREY = (230, 20, 20), (110, 0, 0), (255, 140, 140), (20, 40, 220), \
    (255, 255, 255), (128, 128, 128)
NAME = re.compile(r"^(?P<label>[0-9]{3})_(?P<index>\d+)\.png$")
TINY = ["--charset", "0-9", "--filters", "8,8,8,8", "--dense-units", "8", "--rnn-units", "8", "--batch-size", "4",
        "--epochs", "1", "--warmup-epochs", "0", "--init", "none", "--head", "softmax"]


def stripes(*colours, size=(8, 4)) -> Image.Image:
    """An RGB image of one vertical stripe `size` (width, height) per colour, left to right."""
    w, h = size
    image = Image.new("RGB", (w * len(colours), h))
    for i, colour in enumerate(colours):
        image.paste(colour, (i * w, 0, (i + 1) * w, h))
    return image


def stripe_levels(mask: Image.Image, count: int) -> list[int]:
    a = np.asarray(mask)
    w = a.shape[1] // count
    return [int(a[:, i * w : (i + 1) * w].mean()) for i in range(count)]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, kind", [("red", "hue"), (" Blue ", "hue"), ("GREEN", "hue"), ("black", "dark"),
                                        ("#C81E1E", "rgb"), ("#c81e1e:40", "rgb")])
def test_names_and_hex_colours_parse(text, kind):
    key = ColourKey.parse(text)
    assert key.kind == kind and str(key) == text.strip().lower()
    assert ColourKey.parse(str(key)) == key  # the text saved in config.json reads back as the same key


def test_hex_tolerance_given_or_the_default():
    assert ColourKey.parse("#c81e1e").rgb == (200, 30, 30)
    assert ColourKey.parse("#c81e1e").tolerance == DEFAULT_TOLERANCE
    assert ColourKey.parse("#c81e1e:25.5").tolerance == 25.5


@pytest.mark.parametrize("text, message", [
    ("pink", r"colour 'pink' is not a colour key: give one of red, .*#RRGGBB"),
    ("#12345", r"colour '#12345' is not a colour key"),
    ("#gg0000", r"colour '#gg0000' is not a colour key"),
    ("#ff0000:x", r"colour '#ff0000:x' has tolerance 'x': give an RGB distance from 0 to 442"),
    ("#ff0000:-5", r"tolerance '-5'"),
    ("#ff0000:999", r"tolerance '999'"),
])
def test_bad_colours_are_one_sentence_naming_the_value(text, message):
    with pytest.raises(DataError, match=message) as caught:
        ColourKey.parse(text)
    sentence = str(caught.value).replace("e.g. ", "")
    assert ". " not in sentence and sentence.endswith(".")


def test_none_is_no_key():
    assert optional_key(None) is None and optional_key("none") is None and optional_key("None") is None
    assert optional_key("red") == ColourKey.parse("red")


def test_colour_pairs_must_be_two_colours_the_mask_tells_apart():
    assert [str(k) for k in parse_pair("Red,blue")] == ["red", "blue"]
    assert [str(k) for k in parse_pair("black,#c81e1e")] == ["black", "#c81e1e"]
    with pytest.raises(DataError, match="not KEEP,DECOY"):
        parse_pair("red")
    with pytest.raises(DataError, match="red and orange are too close"):
        parse_pair("red,orange")
    with pytest.raises(DataError, match="too close"):
        parse_pair("#ff0000,red")


# ---------------------------------------------------------------- masking


def test_the_key_colour_turns_black_and_everything_else_white():
    image = stripes(RED, DARK_RED, LIGHT_RED, BLUE, WHITE, GREY)
    mask = ColourKey.parse("red").mask(image)
    assert mask.mode == "L" and mask.size == image.size
    assert stripe_levels(mask, 6) == [0, 0, 0, 255, 255, 255]  # dark and light red count, grey does not
    assert stripe_levels(ColourKey.parse("blue").mask(image), 6) == [255, 255, 255, 0, 255, 255]
    # black is dark whatever the hue: near-black red counts, red does not
    assert stripe_levels(ColourKey.parse("black").mask(stripes((20, 20, 20), (50, 0, 0), RED, WHITE)), 4) == \
        [0, 0, 255, 255]


def test_a_hex_key_matches_by_distance_and_fades_at_its_edge():
    key = ColourKey.parse("#c81e1e:40")  # (200, 30, 30)
    near, edge, outside = (210, 40, 35), (250, 30, 30), (255, 0, 0)  # 15, 50 and 69.5 away
    levels = stripe_levels(key.mask(stripes(near, edge, outside, BLUE)), 4)
    assert levels[0] == 0  # within the tolerance
    assert 0 < levels[1] < 255  # past 40 but before 40 + the edge: grey, as an anti-aliased rim
    assert levels[2:] == [255, 255]


def test_anti_aliased_rims_of_text_come_out_grey():
    # A quarter of red over white: pale, a partial match between the text and the paper.
    rim = tuple(int(round(0.25 * r + 0.75 * 255)) for r in RED)
    (level,) = stripe_levels(ColourKey.parse("red").mask(stripes(rim)), 1)
    assert 0 < level < 255


def test_open_image_masks_at_the_original_size_then_resizes(tmp_path):
    image = stripes(RED, WHITE, BLUE, RED, size=(20, 40)).convert("RGBA")
    image.putpixel((0, 0), (0, 0, 0, 0))  # transparent: composited on white first
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    grey = open_image(buffer.getvalue(), 10, 40, 1, keep_colour=ColourKey.parse("red"))
    assert grey.shape == (10, 40, 1)
    assert grey[1:, :8].max() == 0 and grey[:, 12:28].min() == 255 and grey[:, 32:].max() == 0
    assert grey[0, 0] > 0  # the transparent pixel: white paper, not red
    colour = open_image(buffer.getvalue(), 10, 40, 3, keep_colour=ColourKey.parse("red"))
    assert colour.shape == (10, 40, 3) and (colour == grey).all()  # grey levels in all three channels
    plain = open_image(buffer.getvalue(), 10, 40, 1)
    assert plain[:, 22:28].max() < 128 and plain[:, 32:].min() > 0  # without a key: blue is ink, red mid grey


# ---------------------------------------------------------------- the model config


def test_model_config_keeps_the_key_and_older_configs_have_none():
    keyed = ModelConfig(keep_colour="red")
    assert ModelConfig.from_json(json.loads(json.dumps(keyed.to_json()))) == keyed
    older = ModelConfig().to_json()
    del older["keep_colour"]
    assert ModelConfig.from_json(older).keep_colour is None
    with pytest.raises(DataError, match=r"config.json: keep_colour: colour 'pinkish' is not a colour key"):
        ModelConfig.from_json({**older, "keep_colour": "pinkish"}, "config.json")


# ---------------------------------------------------------------- the two-colour generator


@pytest.fixture(scope="module")
def keyed_folder(tmp_path_factory) -> Path:
    """Six two-colour captchas, three red digits each and 1-3 blue decoys, 96x32."""
    out = tmp_path_factory.mktemp("keyed") / "red-blue"
    assert cli_main(["generate", "--colour-key", "Red,Blue", "--charset", "0-9", "--length", "3", "--width", "96",
                     "--height", "32", "--count", "6", "--workers", "1", "--out", str(out)]) == 0
    return out


def test_generate_colour_key_writes_rgb_images_labelled_by_the_kept_characters(keyed_folder):
    names = sorted(p.name for p in keyed_folder.glob("*.png"))
    assert len(names) == 6 and all(NAME.match(n) for n in names)
    for name in names:
        with Image.open(keyed_folder / name) as im:
            assert (im.mode, im.size) == ("RGB", (96, 32))
    manifest = json.loads((keyed_folder / MANIFEST).read_text())
    assert manifest["colour_key"] == "red,blue" and manifest["length"] == 3  # as the key reads it back


def test_the_kept_and_the_decoy_characters_are_apart_in_the_masks():
    drawer = ColourCaptchaDrawer("0123456789", "red,blue", 3)
    (label,) = drawer.labels(3, 3, 1)
    image = drawer.image(label, (96, 32))
    assert len(label) == 3 and image.size == (96, 32)
    kept = np.asarray(drawer.keep.mask(image)) < 128
    decoys = np.asarray(drawer.decoy.mask(image)) < 128
    assert 0.01 < kept.mean() < 0.5 and 0.002 < decoys.mean() < 0.5  # some ink of each, never the whole image
    assert (kept & decoys).sum() < 0.05 * kept.sum()  # a pixel is one colour or the other
    assert kept.any(axis=0).mean() > 0.1  # three characters' worth of columns, not a speck


def test_a_colour_key_spec_is_checked_and_cached_apart():
    spec = CaptchaSpec("0123456789", 3, 96, 32)
    keyed = dataclasses.replace(spec, colour_key="red,blue")
    assert cache_folder("c", spec, "train") != cache_folder("c", keyed, "train")
    with pytest.raises(DataError, match="too close"):
        CaptchaSpec("0123456789", 3, 96, 32, colour_key="red,orange")
    with pytest.raises(DataError, match="give it without style 'varied'"):
        CaptchaSpec("0123456789", 3, 96, 32, style="varied", colour_key="red,blue")


def test_generate_refuses_a_colour_key_it_cannot_draw(tmp_path, caplog):
    assert cli_main(["generate", "--colour-key", "red,pink", "--out", str(tmp_path / "x")]) == 2
    assert "--colour-key: colour 'pink' is not a colour key" in caplog.text
    assert cli_main(["generate", "--colour-key", "red,blue", "--style", "varied", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- training and reading with a key


def test_train_options_keep_colour_and_colour_key():
    cfg = config_from_args(["--keep-colour", "Red", "--colour-key", "red,Blue"])
    assert (cfg.keep_colour, cfg.colour_key) == ("red", "red,blue")
    assert config_from_args(["--keep-colour", "none"]).keep_colour is None
    for bad in (["--keep-colour", "pink"], ["--colour-key", "red,orange"], ["--colour-key", "red,blue", "--data", "x"]):
        with pytest.raises(SystemExit):
            config_from_args(bad)


def test_training_data_is_masked_to_the_key(keyed_folder, make_config, tmp_path):
    from caocrvfy.training.datasets import load_data

    def paper(**settings) -> float:  # the share of pure white pixels in the training images
        data = load_data(make_config(tmp_path / "unused", **settings), channels=1)
        return float((np.concatenate([data.train[0], data.val[0]]) == 255).mean())

    # Masked, the pale tinted paper, the decoys and the grey noise all turn pure white.
    assert paper(data=str(keyed_folder), keep_colour="red") > 0.6 > paper(data=str(keyed_folder))
    # Synthetic two-colour captchas, cached as drawn and masked as they are read.
    assert paper(colour_key="red,blue", keep_colour="red", width=96, height=32, train_size=4, val_size=2) > 0.6


@pytest.fixture(scope="module")
def keyed_run(keyed_folder, tmp_path_factory) -> Path:
    """A one-epoch tiny model trained on the red digits of `keyed_folder`."""
    run = tmp_path_factory.mktemp("keyed-run") / "run"
    assert train_main(["--data", str(keyed_folder), "--keep-colour", "red", *TINY, "--out", str(run)]) == 0
    return run


def test_train_keep_colour_is_recorded_and_read_with(keyed_run):
    config = json.loads((keyed_run / "config.json").read_text())
    assert config["model"]["keep_colour"] == "red" and config["training"]["keep_colour"] == "red"
    assert Predictor.load(keyed_run).keep_colour == ColourKey.parse("red")
    assert Predictor.load(keyed_run, keep_colour="blue").keep_colour == ColourKey.parse("blue")
    assert Predictor.load(keyed_run, keep_colour=None).keep_colour is None
    assert Predictor.load(keyed_run, keep_colour="none").keep_colour is None
    with pytest.raises(DataError, match="colour 'pink'"):
        Predictor.load(keyed_run, keep_colour="pink")


def test_a_keyed_model_masks_what_it_reads(keyed_run):
    blue = stripes(BLUE, WHITE, size=(48, 32))
    keyed, plain = Predictor.load(keyed_run), Predictor.load(keyed_run, keep_colour=None)
    assert keyed.prepare(blue).min() == 255  # not the key's colour: blank paper
    assert plain.prepare(blue).min() < 128
    ready = plain.prepare(blue)
    assert (keyed.prepare(ready) == ready).all()  # an array of the input's shape is taken as prepared


def test_an_export_reads_with_the_key_of_its_config(keyed_run):
    """Exports take decoded pixels: the key is applied in Python, whatever runs the model."""

    class Runtime:  # what `caocrvfy.inference.runtimes` gives: predict_on_batch(uint8 batch)
        format, batches = "onnx", []

        def predict_on_batch(self, batch):
            self.batches.append(batch)
            return np.full((len(batch), 3, 10), 0.1, np.float32)

    config = json.loads((keyed_run / "config.json").read_text())
    reader = Predictor(Runtime(), config, keyed_run / "model.onnx")
    reader.predict([stripes(BLUE, size=(96, 32))])
    assert Runtime.batches[0].min() == 255


def test_cli_predict_and_evaluate_keep_colour(keyed_run, keyed_folder, capsys, caplog):
    images = sorted(keyed_folder.glob("*.png"))[:2]
    for colour in ("red", "none", "#c81e1e:80"):
        assert cli_main(["predict", "--model", str(keyed_run), "--keep-colour", colour, *map(str, images)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 and all(len(line.split("\t")[1]) == 3 for line in lines)
    assert cli_main(["evaluate", "--model", str(keyed_run), "--data", str(keyed_folder), "--keep-colour", "blue",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 6
    assert cli_main(["predict", "--model", str(keyed_run), "--keep-colour", "pink", str(images[0])]) == 2
    assert "colour 'pink' is not a colour key" in caplog.text


def test_an_unkeyed_model_reads_with_a_key_given(keyed_run, tmp_path):
    plain_run = tmp_path / "plain"
    shutil.copytree(keyed_run, plain_run)
    config = json.loads((plain_run / "config.json").read_text())
    config["model"].pop("keep_colour")  # as written before keys existed
    (plain_run / "config.json").write_text(json.dumps(config))
    assert Predictor.load(plain_run).keep_colour is None
    assert Predictor.load(plain_run, keep_colour="red").keep_colour == ColourKey.parse("red")
