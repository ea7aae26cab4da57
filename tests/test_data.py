import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caocrvfy.data.folders import MANIFEST, choose_input_size, is_validation, load_images, read_folder
from caocrvfy.data.synthetic import CaptchaSpec, SyntheticStream, generate
from caocrvfy.errors import DataError

NAME = re.compile(r"^(?P<label>[0-9]{3})_(?P<index>\d+)\.png$")


def images_in(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png")}


def save(path: Path, size=(40, 20), mode="RGB", color=(10, 20, 30), fmt=None, **kwargs) -> Path:
    Image.new(mode, size, color).save(path, format=fmt, **kwargs)
    return path


# ---------------------------------------------------------------- generate


def test_generate_writes_labelled_images_and_manifest(generated_dir, tiny_spec):
    names = images_in(generated_dir)
    assert len(names) == 6
    for name in names:
        match = NAME.match(name)
        assert match, name
        assert set(match["label"]) <= set(tiny_spec.charset)
        with Image.open(generated_dir / name) as im:
            assert im.size == (tiny_spec.width, tiny_spec.height)
    assert sorted(int(NAME.match(n)["index"]) for n in names) == list(range(6))
    manifest = json.loads((generated_dir / MANIFEST).read_text())
    assert {k: manifest[k] for k in ("charset", "length", "width", "height", "count")} == {
        "charset": tiny_spec.charset, "length": 3, "width": 64, "height": 24, "count": 6}


def test_generate_tops_up_an_existing_folder(tmp_path, tiny_spec):
    generate(tmp_path, 2, tiny_spec, workers=1)
    first = {name: (tmp_path / name).read_bytes() for name in images_in(tmp_path)}
    generate(tmp_path, 5, tiny_spec, workers=1)
    after = images_in(tmp_path)
    assert len(first) == 2 and len(after) == 5
    assert all((tmp_path / name).read_bytes() == data for name, data in first.items())  # kept as they were
    assert sorted(int(NAME.match(n)["index"]) for n in after) == list(range(5))
    assert json.loads((tmp_path / MANIFEST).read_text())["count"] == 5
    generate(tmp_path, 3, tiny_spec, workers=1)  # asking for fewer removes nothing
    assert images_in(tmp_path) == after


def test_generate_can_run_in_several_trainings_sharing_one_folder(tmp_path, tiny_spec):
    # Two trainings on one cache folder both check it and write its manifest; they once raced
    # on one temporary file name and one of them died.
    generate(tmp_path, 2, tiny_spec, workers=1)
    for _ in range(5):
        (tmp_path / MANIFEST).unlink()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: generate(tmp_path, 2, tiny_spec, workers=1), range(16)))
        assert json.loads((tmp_path / MANIFEST).read_text())["count"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".png")) == [MANIFEST]


def test_generate_refuses_a_folder_of_another_kind(generated_dir, tiny_spec):
    other = CaptchaSpec(tiny_spec.charset, length=4, width=tiny_spec.width, height=tiny_spec.height)
    before = images_in(generated_dir)
    with pytest.raises(DataError, match="another kind"):
        generate(generated_dir, 10, other, workers=1)
    assert images_in(generated_dir) == before


def test_synthetic_stream_fills_and_samples(tiny_spec):
    stream = SyntheticStream(tiny_spec, channels=1, capacity=100, workers=1, initial=16)
    try:
        stream.wait_ready()
        assert 16 <= stream.filled <= 100
        images, labels = stream.sample(np.random.default_rng(0), 8)
        assert images.shape == (8, 24, 64, 1) and images.dtype == np.uint8
        assert labels.shape == (8, 3) and labels.min() >= 1 and labels.max() <= 10
        assert images.reshape(8, -1).std(1).min() > 0  # drawn captchas, not the empty buffer
    finally:
        stream.close()
    assert not stream.filling  # close() leaves no filling thread behind


def test_synthetic_stream_keeps_captchas_at_the_model_size(tiny_spec):
    stream = SyntheticStream(tiny_spec, channels=1, capacity=40, workers=1, initial=8, size=(12, 32))
    try:
        stream.wait_ready()
        images, _ = stream.sample(np.random.default_rng(0), 4)
        assert images.shape == (4, 12, 32, 1) and images.reshape(4, -1).std(1).min() > 0
    finally:
        stream.close()


# ---------------------------------------------------------------- read_folder


def test_read_folder_of_generated_captchas(generated_dir, tiny_spec):
    found = read_folder(generated_dir)
    assert len(found.paths) == 6 and not found.skipped
    assert found.charset == tiny_spec.charset  # from the manifest
    assert found.manifest["length"] == 3
    assert [p.name.split("_")[0] for p in found.paths] == found.labels


def test_labels_from_file_names(tmp_path):
    for name in ("ab12_0.png", "xy.png", "k7_extra_bits.jpg", "q.r.gif", "notes.txt", "_nolabel.png"):
        (tmp_path / name).write_bytes(b"")
    found = read_folder(tmp_path)
    assert dict(zip((p.name for p in found.paths), found.labels)) == {
        "ab12_0.png": "ab12", "xy.png": "xy", "k7_extra_bits.jpg": "k7", "q.r.gif": "q"}
    assert found.skipped == [("_nolabel.png", "empty label")]
    assert found.charset == "127abkqxy"  # inferred from the labels, sorted


def test_skips_labels_outside_charset_and_of_wrong_length(tmp_path):
    for name in ("123_0.png", "12a_1.png", "1234_2.png", "45_3.png", "678_4.png"):
        (tmp_path / name).write_bytes(b"")
    found = read_folder(tmp_path, charset="0123456789", length=3)
    assert found.labels == ["123", "678"]
    reasons = dict(found.skipped)
    assert set(reasons) == {"12a_1.png", "1234_2.png", "45_3.png"}
    assert "outside the character set" in reasons["12a_1.png"] and "'a'" in reasons["12a_1.png"]
    assert "4 characters" in reasons["1234_2.png"]
    assert "2 characters" in reasons["45_3.png"]


def test_labels_from_csv(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "labels.csv").write_text(
        "file,label\n"
        "a.png, X1 \n"
        "b.png,\n"
        "c.png,Y2\n"
        "gone.png,Z3\n"
        "d.png,W!\n", encoding="utf-8")
    found = read_folder(tmp_path, charset="123WXYZ")
    assert [p.name for p in found.paths] == ["a.png", "c.png"]
    assert found.labels == ["X1", "Y2"]  # from the csv, stripped, not from the names
    reasons = dict(found.skipped)
    assert reasons["b.png"] == "empty label"
    assert "missing" in reasons["gone.png"]
    assert "outside the character set" in reasons["d.png"]


def test_ignore_case_folds_labels(tmp_path):
    (tmp_path / "AbC_0.png").write_bytes(b"")
    assert read_folder(tmp_path, ignore_case=True).labels == ["abc"]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no usable labelled images") as err:
        read_folder(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_with_only_bad_labels_is_a_clear_error(tmp_path):
    (tmp_path / "abc_0.png").write_bytes(b"")
    with pytest.raises(DataError, match="no usable labelled images"):
        read_folder(tmp_path, charset="0123456789")


def test_not_a_folder_is_a_clear_error(tmp_path):
    file = tmp_path / "file.png"
    file.write_bytes(b"")
    for path in (file, tmp_path / "missing"):
        with pytest.raises(DataError, match="is not a folder") as err:
            read_folder(path)
        assert str(path) in str(err.value)


# ---------------------------------------------------------------- load_images


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """One image per mode and format, each a different size, plus a broken file and a duplicate."""
    save(tmp_path / "rgb_0.png", (50, 20), "RGB", (200, 10, 10))
    save(tmp_path / "grey_0.png", (60, 30), "L", 90)
    Image.new("RGB", (30, 12), (0, 0, 255)).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "palette_0.png")
    save(tmp_path / "clear_0.png", (40, 40), "RGBA", (0, 0, 0, 0))  # fully transparent black
    save(tmp_path / "clearp_0.png", (40, 20), "P", 0, transparency=0)  # palette, index 0 transparent
    save(tmp_path / "photo_0.jpg", (45, 15), "RGB", (20, 200, 20), quality=90)
    frames = [Image.new("P", (36, 18), i) for i in (1, 2)]
    frames[0].save(tmp_path / "anim_0.gif", save_all=True, append_images=frames[1:])
    save(tmp_path / "bmp_0.bmp", (40, 20), "RGB", (1, 2, 3))
    (tmp_path / "broken_0.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (tmp_path / "rgb_1.png").write_bytes((tmp_path / "rgb_0.png").read_bytes())  # exact duplicate
    return tmp_path


@pytest.mark.parametrize("channels", [1, 3])
def test_load_images_decodes_every_mode_to_the_requested_shape(mixed_folder, channels):
    found = read_folder(mixed_folder)
    images, labels, paths = load_images(found, height=24, width=64, channels=channels)
    assert images.shape == (8, 24, 64, channels) and images.dtype == np.uint8
    assert sorted(labels) == sorted(["rgb", "grey", "palette", "clear", "clearp", "photo", "anim", "bmp"])
    assert [p.name for p in paths] == [p.name for p in found.paths if p.name not in ("broken_0.png", "rgb_1.png")]
    reasons = dict(found.skipped)
    assert set(reasons) == {"broken_0.png", "rgb_1.png"}
    assert "cannot be read as an image" in reasons["broken_0.png"]
    assert reasons["rgb_1.png"] == "duplicate of rgb_0.png"
    # Transparency is laid over white, not black.
    assert images[labels.index("clear")].min() == 255
    assert images[labels.index("clearp")].min() == 255


def test_load_images_keeps_duplicates_when_asked(mixed_folder):
    found = read_folder(mixed_folder)
    images, labels, _ = load_images(found, 24, 64, 1, dedupe=False)
    assert labels.count("rgb") == 2 and len(images) == 9


def test_truncated_image_is_skipped(tmp_path):
    good = save(tmp_path / "ok_0.png", (40, 20), "RGB", (5, 5, 5))
    Image.effect_noise((64, 64), 50).save(tmp_path / "cut_0.png")
    raw = (tmp_path / "cut_0.png").read_bytes()
    (tmp_path / "cut_0.png").write_bytes(raw[: len(raw) // 2])
    found = read_folder(tmp_path)
    images, labels, paths = load_images(found, 24, 64, 1)
    assert paths == [good] and labels == ["ok"]
    assert [name for name, _ in found.skipped] == ["cut_0.png"]


def test_no_readable_images_is_a_clear_error(tmp_path):
    (tmp_path / "abc_0.png").write_bytes(b"not an image")
    found = read_folder(tmp_path)
    with pytest.raises(DataError, match="no readable images"):
        load_images(found, 24, 64, 1)


# ---------------------------------------------------------------- split and size


def test_is_validation_is_deterministic_by_name():
    names = [f"{i:04d}_{i}.png" for i in range(2000)]
    first = [is_validation(n, 0.2) for n in names]
    assert first == [is_validation(n, 0.2) for n in names]
    assert 0.15 < sum(first) / len(names) < 0.25
    assert not any(is_validation(n, 0.0) for n in names)
    assert all(is_validation(n, 1.0) for n in names)
    # A larger fraction only adds names to the validation side.
    assert all(is_validation(n, 0.5) for n, v in zip(names, first) if v)


def test_choose_input_size_from_median_aspect_ratio(tmp_path):
    paths = [save(tmp_path / f"{i}.png", size) for i, size in enumerate([(90, 30), (120, 40), (300, 40)])]
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert choose_input_size(paths + [tmp_path / "bad.png"]) == (64, 192)  # median ratio 3
    assert choose_input_size(paths[:1], height=32) == (32, 96)
    assert choose_input_size([]) == (64, 160)  # no readable image: ratio 2.5
    height, width = choose_input_size([save(tmp_path / "tall.png", (10, 50))])
    assert height == 64 and width == 32  # at least 32 wide
    height, width = choose_input_size([save(tmp_path / "odd.png", (77, 31))])
    assert width % 8 == 0


def test_open_image_reads_bytes_and_first_frame(tmp_path):
    from caocrvfy.data.images import open_image

    buf = io.BytesIO()
    frames = [Image.new("L", (20, 10), v) for v in (30, 220)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    image = open_image(buf.getvalue(), 10, 20, 1)
    assert image.shape == (10, 20, 1) and image.dtype == np.uint8
    assert image.max() < 128  # the first frame (dark), not the second


def test_a_size_named_for_a_labelled_folder_wins_over_the_images_aspect(tmp_path):
    from caocrvfy.training.config import config_from_args
    from caocrvfy.training.datasets import load_data

    for i, label in enumerate(["12", "34", "56", "78"]):
        save(tmp_path / f"{label}_{i}.png", (90, 30), color=(10 * i, 20, 30))  # not duplicates
    common = ["--data", str(tmp_path), "--init", "none", "--charset", "0-9"]
    sizes = {}
    for named in ([], ["--height", "32"], ["--width", "120", "--height", "40"]):
        data = load_data(config_from_args(common + named), channels=1)
        sizes[tuple(named)] = (data.height, data.width, data.train[0].shape[1:3])
    assert sizes[()] == (64, 192, (64, 192))  # ratio 3 at the labelled height
    assert sizes[("--height", "32")] == (32, 96, (32, 96))  # the width follows the aspect at that height
    assert sizes[("--width", "120", "--height", "40")] == (40, 120, (40, 120))  # each image resized to it
