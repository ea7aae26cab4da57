"""Arithmetic captchas: the parser behind `predict --solve` and `evaluate --solve`."""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction  # noqa: F401  (used by the eval oracle below)

import numpy as np
import pytest

from caocrvfy.cli import main as cli_main
from caocrvfy.inference.arithmetic import ExpressionError, expression_automaton, solve, solve_exact

pytestmark = pytest.mark.eager_steps


@pytest.mark.parametrize("text, answer", [
    ("14+27=?", "41"), ("14+27=", "41"), ("14+27?", "41"), (" 5 + 5 = ? ", "10"), ("3x4", "12"), ("3X4", "12"),
    ("3*4", "12"), ("3×4=?", "12"), ("8/2", "4"), ("12÷4", "3"), ("2+3x4", "14"), ("2x3+4", "10"),
    ("10-2-3", "5"), ("8/2/2", "2"), ("3-5", "-2"), ("7/2", "3.5"), ("1/3", "0.333333"), ("41", "41"),
    ("007+1", "8"),
])
def test_solve(text, answer):
    assert solve(text) == answer


@pytest.mark.parametrize("text, message", [
    ("", "no expression"), ("=?", "no expression"), ("14+", "alternate"), ("x3", "alternate"),
    ("1++2", "alternate"), ("a+b", "'a' is neither"), ("1/0", "divides by zero"), ("2x(3)", r"'\(' is neither"),
    ("__import__('os')", "neither a digit"), ("1234567890+1", "more than 9 digits"), ("1" * 70, "longer than"),
    ("14+27=?=?", "'=' is neither"), ("1**2", "alternate"),
])
def test_what_is_not_an_expression_is_one_sentence(text, message):
    with pytest.raises(ExpressionError, match=message):
        solve(text)


def test_precedence_and_order_match_exact_arithmetic():
    rng = random.Random(0)
    for _ in range(500):
        numbers = [rng.randint(1, 99) for _ in range(rng.randint(1, 5))]
        ops = [rng.choice("+-x/") for _ in numbers[1:]]
        text = str(numbers[0]) + "".join(f"{o}{n}" for o, n in zip(ops, numbers[1:]))
        # the oracle: Python's own precedence on Fractions of the same tokens
        oracle = eval("".join([f"Fraction({numbers[0]})"] + [f"{'*' if o == 'x' else o}Fraction({n})"
                                                             for o, n in zip(ops, numbers[1:])]))
        assert solve_exact(text) == oracle, text


def test_predict_solve_prints_the_answer_beside_the_reading(trained_run, generated_dir, capsys):
    assert cli_main(["predict", "--model", str(trained_run), "--solve", "--json", str(generated_dir)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().split("\n")]
    assert len(lines) == 6
    assert all(line["answer"] == str(int(line["text"])) for line in lines)  # the tiny model reads 3 digits


def test_evaluate_solve_scores_answers(trained_run, generated_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "answers"
    folder.mkdir()
    rows = ["file,label"]
    for i, path in enumerate(sorted(generated_dir.glob("*.png"))):
        shutil.copy(path, folder / f"{i}.png")
        rows.append(f"{i}.png,{path.name.split('_')[0]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    assert cli_main(["evaluate", "--model", str(trained_run), "--data", str(folder), "--solve", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["count"] == 6 and figures["not_expressions"] == 0 and 0 <= figures["answer_accuracy"] <= 1
    assert cli_main(["evaluate", "--model", str(trained_run), "--data", str(folder), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["full_match"]
    assert figures["answer_accuracy"] >= plain  # a right reading is a right answer


def test_expression_labels_are_solvable_whole_and_in_range():
    from caocrvfy.data.expressions import ExpressionSpec

    spec = ExpressionSpec(0, 30, "+-x/", "=?")
    assert ExpressionSpec.parse(spec.text()) == spec and spec.lengths == (5, 7)
    for label in spec.labels(400, np.random.default_rng(0)):
        assert label.endswith("=?") and set(label) <= set(spec.charset)
        a, _, b = re.fullmatch(r"(\d+)([-+x/])(\d+)=\?", label).groups()
        assert 0 <= int(a) <= 30 and 0 <= int(b) <= 30
        value = solve_exact(label)
        assert value >= 0 and value.denominator == 1, label  # no negative answers, exact divisions


@pytest.mark.parametrize("options, message", [(["--operands", "5-2"], "operands 5-2"),
                                              (["--operators", "+%"], "operators"), (["--operands", "x"], "arithmetic")])
def test_bad_arithmetic_options_are_one_sentence(tmp_path, options, message, caplog):
    assert cli_main(["generate", "--arithmetic", "--count", "2", "--out", str(tmp_path / "a"), *options]) == 2
    assert message in caplog.text


def test_generate_arithmetic_labels_in_labels_csv_and_tops_up(tmp_path):
    from caocrvfy.data.folders import read_folder

    out = tmp_path / "arith"
    args = ["generate", "--arithmetic", "--operands", "1-9", "--operators", "+x/", "--ask", "=", "--width", "96",
            "--height", "32", "--workers", "1", "--out", str(out)]
    assert cli_main([*args, "--count", "5"]) == 0
    assert cli_main([*args, "--count", "8"]) == 0
    found = read_folder(out)
    assert sorted(p.name for p in found.paths) == sorted(f"{i}.png" for i in range(8))
    assert all(label.endswith("=") and solve(label).isdigit() for label in found.labels)
    assert found.charset == "".join(sorted("0123456789+x/="))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arithmetic"] == "1-9 +x/ =" and manifest["min_length"] == 4 and manifest["length"] == 4


def test_the_expression_automaton_accepts_what_solve_answers_with_an_operator():
    import itertools

    charset = "10+x=?a"
    delta, accepting = expression_automaton(charset)
    for n in range(7):
        for chars in itertools.product(charset, repeat=n):
            text, state = "".join(chars), 0
            for char in text:
                state = int(delta[state, charset.index(char)]) if state >= 0 else -1
            try:
                solve(text)
                answered = any(op in text for op in "+x")
            except ExpressionError:
                answered = False
            assert (state >= 0 and bool(accepting[state])) == answered, text


def test_answers_count_right_answers_unparsed_readings_and_bad_truths():
    from caocrvfy.evaluation.scores import answers

    records = [("14+27=?", "41", 0.9), ("3x4", "2x6=?", 0.9), ("3x4", "3+4", 0.9), ("5+5", "5+", 0.9),
               ("a+b", "1+1", 0.9)]
    right, unsolved, bad = answers(records)
    assert (right, unsolved) == (2, 1)
    assert [i for i, _ in bad] == [4] and "a+b" in bad[0][1]
