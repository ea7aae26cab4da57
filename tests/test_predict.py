import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caocrvfy.cli import main as cli_main
from caocrvfy.errors import DataError
from caocrvfy.evaluation import evaluate_folder
from caocrvfy.inference import Predictor, expand_inputs
from caocrvfy.inference.ctc import ctc_best_path, ctc_best_path_accepted, ctc_label_probability
from caocrvfy.inference.decoding import decode_outputs

CHARSET = "0123456789"


@pytest.fixture(scope="module")
def reader(trained_run) -> Predictor:
    return Predictor.load(trained_run)


@pytest.fixture(scope="module")
def images(generated_dir) -> list[Path]:
    return sorted(generated_dir.glob("*.png"))


# ---------------------------------------------------------------- decoding raw outputs


def test_decode_ctc_outputs_merges_repeats_and_drops_blanks():
    steps = [1, 1, 0, 1, 2, 2, 0, 0]  # "a a - a b b - -" reads "aab"
    out = np.full((1, len(steps), 3), 0.1, np.float32)
    out[0, np.arange(len(steps)), steps] = 0.8
    (prediction,) = decode_outputs(out, "ctc", "ab")
    assert prediction.text == "aab"
    # The read string's probability over all its alignments, at least the greedy path's.
    assert prediction.confidence == pytest.approx(ctc_label_probability(out[0].astype(np.float64), [1, 1, 2]))
    assert prediction.confidence > 0.8 ** len(steps)


def brute_force_ctc(probs: np.ndarray, label: list[int]) -> float:
    """Sum over every path of classes that collapses to `label` (tiny cases only)."""
    total = 0.0
    for path in itertools.product(range(probs.shape[1]), repeat=len(probs)):
        merged = [c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        if merged == label:
            total += float(np.prod(probs[np.arange(len(path)), path]))
    return total


@pytest.mark.parametrize("label", [[], [1], [2, 1], [1, 1], [2, 2, 1], [1, 2, 1]])
def test_ctc_label_probability_sums_all_alignments(label):
    rng = np.random.default_rng(len(label))
    logits = rng.normal(0, 1.5, (6, 3))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert ctc_label_probability(probs, np.array(label)) == pytest.approx(brute_force_ctc(probs, label), rel=1e-9)


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_best_ctc_path_of_a_given_length_matches_brute_force(length):
    rng = np.random.default_rng(length)
    probs = rng.dirichlet(np.ones(3), size=5)
    best, best_p = None, -1.0
    for path in itertools.product(range(3), repeat=5):
        merged = [c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        p = float(np.prod(probs[np.arange(5), path]))
        if len(merged) == length and p > best_p:
            best, best_p = merged, p
    assert list(ctc_best_path(probs, length, length)) == best


def test_fixed_length_models_read_that_many_characters():
    steps = [1, 0, 2, 0, 1, 0]  # greedy reads "aba", but the model reads 2 characters
    out = np.full((1, len(steps), 3), 0.05, np.float32)
    out[0, np.arange(len(steps)), steps] = 0.9
    out[0, 4] = [0.3, 0.65, 0.05]  # the third character is the least sure
    assert decode_outputs(out, "ctc", "ab")[0].text == "aba"
    (fixed,) = decode_outputs(out, "ctc", "ab", length=2)
    assert fixed.text == "ab"
    assert fixed.confidence == pytest.approx(ctc_label_probability(out[0].astype(np.float64), [1, 2]))


def test_ctc_label_probabilities_of_all_strings_sum_to_one():
    probs = np.random.default_rng(1).dirichlet(np.ones(3), size=4)
    strings = {tuple(c for i, c in enumerate(p) if c and (i == 0 or c != p[i - 1]))
               for p in itertools.product(range(3), repeat=4)}
    assert sum(ctc_label_probability(probs, np.array(s, int)) for s in strings) == pytest.approx(1.0)


def test_decode_softmax_and_sigmoid_outputs():
    softmax = np.array([[[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]]], np.float32)
    (p,) = decode_outputs(softmax, "softmax", "xyz")
    assert p.text == "yx" and p.confidence == pytest.approx(0.7 * 0.5)
    sigmoid = np.array([[[0.2, 0.9, 0.9], [0.0, 0.0, 0.5]]], np.float32)  # ties go to the first
    (p,) = decode_outputs(sigmoid, "sigmoid", "xyz")
    assert p.text == "yz" and p.confidence == pytest.approx(0.9 / 2.0 * 1.0)


# ---------------------------------------------------------------- Predictor


def test_predictor_reads_its_settings_from_config(reader):
    assert (reader.charset, reader.head) == (CHARSET, "softmax")
    assert (reader.height, reader.width, reader.channels) == (24, 64, 1)


def test_predict_files(reader, images):
    predictions = reader.predict(images)
    assert len(predictions) == len(images)
    for p in predictions:
        assert len(p.text) == 3 and set(p.text) <= set(CHARSET)
        assert 0.0 <= p.confidence <= 1.0


def test_predict_is_the_same_for_path_bytes_image_and_array(reader, images):
    path = images[0]
    with Image.open(path) as im:
        pil = im.copy()
    array = reader.prepare(path)
    assert array.shape == (24, 64, 1) and array.dtype == np.uint8
    results = reader.predict([path, str(path), path.read_bytes(), pil, array])
    assert len({(r.text, round(r.confidence, 5)) for r in results}) == 1


def test_predict_empty_list(reader):
    assert reader.predict([]) == []


def test_predict_names_the_bad_file(reader, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png cannot be read as an image"):
        reader.predict([images[0], bad])


def test_predict_files_reads_the_others_when_one_is_bad(reader, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    paths = [images[0], bad, images[1]]
    results = list(reader.predict_files(paths, batch_size=2))
    assert [r[0] for r in results] == paths
    (_, ok1, err1), (_, none, error), (_, ok2, err2) = results
    assert none is None and "cannot be read as an image" in error
    assert err1 is None and err2 is None
    assert [ok1.text, ok2.text] == [p.text for p in reader.predict([images[0], images[1]])]


def test_expand_inputs_lists_folders(generated_dir, images, tmp_path):
    extra = tmp_path / "x.txt"
    assert expand_inputs([str(generated_dir), str(extra)]) == images + [extra]


# ---------------------------------------------------------------- loading errors


def test_load_accepts_the_model_file(trained_run):
    assert Predictor.load(trained_run / "model.keras").path == trained_run / "model.keras"


def test_load_a_file_that_is_not_a_model(trained_run, tmp_path):
    shutil.copy(trained_run / "config.json", tmp_path / "config.json")
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="is not a .keras file") as err:
        Predictor.load(fake)
    assert str(fake) in str(err.value)
    with pytest.raises(DataError, match="is not a .keras file"):
        Predictor.load(tmp_path)  # the folder form finds the same file


def test_load_a_non_keras_file_names_it(trained_run, tmp_path):
    shutil.copy(trained_run / "config.json", tmp_path / "config.json")
    picture = tmp_path / "captcha.png"
    Image.new("L", (64, 24)).save(picture)
    with pytest.raises(DataError, match="captcha.png"):
        Predictor.load(picture)


def test_load_without_config_json(trained_run, tmp_path):
    shutil.copy(trained_run / "model.keras", tmp_path / "model.keras")
    with pytest.raises(DataError, match="config.json is missing"):
        Predictor.load(tmp_path)


def test_load_missing_paths(tmp_path):
    with pytest.raises(DataError, match="holds no model.keras"):
        Predictor.load(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        Predictor.load(tmp_path / "nothing.keras")


# ---------------------------------------------------------------- evaluation


def test_evaluate_folder_agrees_with_predictions(reader, generated_dir, images):
    result = evaluate_folder(reader, generated_dir)
    truths = [p.name.split("_")[0] for p in images]
    texts = [p.text for p in reader.predict(images)]
    assert result["count"] == len(images) and result["skipped"] == []
    assert result["full_match"] == pytest.approx(np.mean([t == p for t, p in zip(truths, texts)]))
    right = sum(a == b for t, p in zip(truths, texts) for a, b in zip(t, p))
    assert result["char_accuracy"] == pytest.approx(right / (3 * len(images)))
    wrong = {p.name: (t, x) for p, t, x in zip(images, truths, texts) if t != x}
    assert {w["file"]: (w["label"], w["read"]) for w in result["wrong"]} == wrong
    assert [w["confidence"] for w in result["wrong"]] == sorted((w["confidence"] for w in result["wrong"]), reverse=True)


def test_evaluate_folder_lists_unreadable_images(reader, generated_dir, tmp_path):
    for image in generated_dir.glob("*.png"):
        shutil.copy(image, tmp_path / image.name)
    (tmp_path / "123_99.png").write_bytes(b"broken")
    result = evaluate_folder(reader, tmp_path)
    assert result["count"] == 6
    assert [s["file"] for s in result["skipped"]] == ["123_99.png"]


# ---------------------------------------------------------------- the caocrvfy command


def test_cli_predict_prints_file_text_confidence(trained_run, images, capsys):
    assert cli_main(["predict", "--model", str(trained_run), *map(str, images[:3])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, images):
        file, text, confidence = line.split("\t")
        assert file == str(path)
        assert len(text) == 3 and set(text) <= set(CHARSET)
        assert 0.0 <= float(confidence) <= 1.0


def test_cli_predict_json_and_a_bad_file(trained_run, images, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    # Every file is read, and the exit status says that one could not be.
    assert cli_main(["predict", "--model", str(trained_run), "--json", str(images[0]), str(bad), str(images[1])]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in records] == [str(images[0]), str(bad), str(images[1])]
    assert "cannot be read as an image" in records[1]["error"]
    for record in (records[0], records[2]):
        assert set(record) == {"file", "text", "confidence"} and len(record["text"]) == 3
        assert 0.0 <= record["confidence"] <= 1.0


def test_cli_predict_fails_when_nothing_can_be_read(trained_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert cli_main(["predict", "--model", str(trained_run), str(bad)]) == 1
    assert capsys.readouterr().out == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["predict", "--model", str(trained_run), str(empty)]) == 2


def test_cli_evaluate_json(trained_run, generated_dir, reader, capsys):
    assert cli_main(["evaluate", "--model", str(trained_run), "--data", str(generated_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"full_match", "char_accuracy", "count"}
    assert result["count"] == 6
    expected = evaluate_folder(reader, generated_dir)
    assert result["full_match"] == pytest.approx(expected["full_match"])
    assert result["char_accuracy"] == pytest.approx(expected["char_accuracy"])


def test_cli_reports_data_errors_with_exit_code_2(tmp_path, capsys):
    assert cli_main(["predict", "--model", str(tmp_path), "x.png"]) == 2
    assert capsys.readouterr().out == ""


def test_jax_batches_are_padded_to_powers_of_two():
    from caocrvfy.inference.predictor import bucket

    assert [bucket(n) for n in (0, 1, 2, 3, 5, 128, 129, 256)] == [1, 1, 2, 4, 8, 128, 256, 256]


@pytest.mark.slow
def test_commands_print_no_tensorflow_start_up_lines_unless_verbose(trained_run, images):
    import subprocess
    import sys

    command = [sys.executable, "-m", "caocrvfy", "predict", "--model", str(trained_run), str(images[0])]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stdout.count("\t") == 2
    assert quiet.stderr == ""  # no oneDNN, cuda or absl lines
    loud = subprocess.run(command + ["--verbose"], capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and "oneDNN" in loud.stderr
    # A mistake of the user's is still one line.
    wrong = subprocess.run(command[:5] + [str(trained_run / "missing")] + command[6:], capture_output=True,
                           text=True, timeout=300)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1 and "does not exist" in wrong.stderr


def brute_force_best(probs: np.ndarray, keep) -> list[int] | None:
    """The reading of the most probable path whose reading passes `keep` (tiny cases only)."""
    best, best_p = None, -1.0
    for path in itertools.product(range(probs.shape[1]), repeat=len(probs)):
        merged = [c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        p = float(np.prod(probs[np.arange(len(path)), path]))
        if keep(merged) and p > best_p:
            best, best_p = merged, p
    return best


@pytest.mark.parametrize("low, high, allowed", [
    (0, None, [True, False, True]), (2, None, None), (0, 1, None), (1, 3, [False, True, True]),
    (2, 2, [True, False, False]), (3, 4, [False, False, True]), (0, 0, None), (5, 5, None), (6, None, None),
    (1, None, [False, False, False]),
])
def test_constrained_best_path_matches_brute_force(low, high, allowed):
    rng = np.random.default_rng(low * 10 + (high or 9))
    probs = rng.dirichlet(np.ones(4), size=5)  # blank + 3 classes, 5 steps: 1,024 paths
    mask = None if allowed is None else np.array(allowed)

    def keep(merged):
        return low <= len(merged) <= (high if high is not None else 99) and (
            mask is None or all(mask[c - 1] for c in merged))

    expected = brute_force_best(probs, keep)
    found = ctc_best_path(probs, low, high, mask)
    assert (None if found is None else list(found)) == expected


@pytest.mark.parametrize("low, high, allowed, seed", [
    (0, None, None, 0), (0, None, None, 1), (0, None, None, 2), (3, None, None, 3), (0, 3, None, 4),
    (4, 4, None, 5), (0, None, [True, True, False, True], 6), (6, None, None, 7),
])
def test_the_best_expression_path_matches_brute_force(low, high, allowed, seed):
    from caocrvfy.inference.arithmetic import ExpressionError, expression_automaton, solve
    from caocrvfy.inference.decoding import restricted_automaton

    charset = "1+=?"
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=5)  # blank + 4 classes, 5 steps: 3,125 paths
    mask = None if allowed is None else np.array(allowed)

    def keep(merged):
        text = "".join(charset[c - 1] for c in merged)
        if not (low <= len(merged) <= (high if high is not None else 99)) or "+" not in text or (
                mask is not None and not all(mask[c - 1] for c in merged)):
            return False
        try:
            solve(text)
        except ExpressionError:
            return False
        return True

    expected = brute_force_best(probs, keep)
    found = ctc_best_path_accepted(probs, *restricted_automaton(expression_automaton(charset), mask, low, high, len(probs)))
    assert (None if found is None else list(found)) == expected


def test_solving_reads_the_best_expression_when_the_free_reading_is_not_one():
    from caocrvfy.inference.decoding import Constraint

    steps = [1, 0, 3, 0, 1, 0, 4, 0]  # greedy reads "1=1?": not an expression
    out = np.full((1, len(steps), 5), 0.02, np.float32)
    out[0, np.arange(len(steps)), steps] = 0.92
    out[0, 2] = [0.02, 0.02, 0.44, 0.5, 0.02]  # "+" a close second to "="
    assert decode_outputs(out, "ctc", "1+=?")[0].text == "1=1?"
    assert decode_outputs(out, "ctc", "1+=?", constraint=Constraint.of(expression=True))[0].text == "1+1?"
    out[0, 2] = [0.02, 0.5, 0.44, 0.02, 0.02]  # greedy "111?": a number, no expression
    assert decode_outputs(out, "ctc", "1+=?", constraint=Constraint.of(expression=True))[0].text == "1+1?"
    out[0, 2] = [0.02, 0.02, 0.5, 0.44, 0.02]  # greedy "1+1?", an expression: kept
    assert decode_outputs(out, "ctc", "1+=?", constraint=Constraint.of(expression=True))[0].text == "1+1?"


def test_the_constraint_changes_only_readings_that_break_it():
    from caocrvfy.inference.decoding import Constraint

    steps = [1, 0, 3, 0, 2, 0]  # greedy reads "acb"
    out = np.full((1, len(steps), 4), 0.02, np.float32)
    out[0, np.arange(len(steps)), steps] = 0.94
    out[0, 2] = [0.02, 0.02, 0.46, 0.5]  # "c" barely beats "b" at the second character
    assert decode_outputs(out, "ctc", "abc")[0].text == "acb"
    assert decode_outputs(out, "ctc", "abc", constraint=Constraint.of(allowed="ab"))[0].text == "abb"
    assert decode_outputs(out, "ctc", "abc", constraint=Constraint.of(length=3, allowed="abc"))[0].text == "acb"
    assert decode_outputs(out, "ctc", "abc", constraint=Constraint.of(max_length=2))[0].text == "ab"
    softmax = np.array([[[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]]], np.float32)
    (p,) = decode_outputs(softmax, "softmax", "xyz", constraint=Constraint.of(allowed="xz"))
    assert p.text == "zx" and p.confidence == pytest.approx(0.2 * 0.5)


@pytest.mark.parametrize("fields, message", [
    ({"length": 3, "min_length": 4}, "contradicts"), ({"min_length": 5, "max_length": 4}, "longer than"),
    ({"allowed": ""}, "empty"),
])
def test_contradictory_constraints_are_one_sentence(fields, message):
    from caocrvfy.inference.decoding import Constraint

    with pytest.raises(DataError, match=message):
        Constraint.of(**fields)


def test_characters_the_model_cannot_read_are_refused():
    from caocrvfy.inference.decoding import Constraint

    with pytest.raises(DataError, match="'Z' are not in the model's character set"):
        decode_outputs(np.zeros((1, 4, 4), np.float32), "ctc", "abc", constraint=Constraint.of(allowed="aZ"))
    assert Constraint.of() is None
    with pytest.raises(DataError, match="reads exactly 2 characters"):
        decode_outputs(np.zeros((1, 2, 3), np.float32), "softmax", "xyz", constraint=Constraint.of(length=3))


def test_predict_and_evaluate_take_a_constraint(trained_run, generated_dir, capsys):
    assert cli_main(["predict", "--model", str(trained_run), "--allowed", "0-4", str(generated_dir)]) == 0
    texts = [line.split("\t")[1] for line in capsys.readouterr().out.strip().split("\n")]
    assert len(texts) == 6 and all(set(t) <= set("01234") for t in texts)
    assert cli_main(["evaluate", "--model", str(trained_run), "--data", str(generated_dir), "--length", "3",
                     "--allowed", "0-9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 6
    assert cli_main(["predict", "--model", str(trained_run), "--allowed", "a-c", str(generated_dir)]) == 2
    assert cli_main(["predict", "--model", str(trained_run), "--length", "3", "--max-length", "2",
                     str(generated_dir)]) == 2
