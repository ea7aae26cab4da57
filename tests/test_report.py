"""Error-report figures on hand-made readings with exact expected values, and a tiny report."""

import json
from pathlib import Path

import pytest
from PIL import Image

from caocrvfy import cli
from caocrvfy.evaluation import report, scores
from caocrvfy.inference import Prediction, Predictor

# truth, reading, confidence: right; wrong case; one character missing; one character extra
READINGS = [
    ("ab", "ab", 0.95),
    ("ab", "aB", 0.85),
    ("abc", "ab", 0.45),
    ("ba", "bab", 0.15),
]

# confidence and correctness chosen so that accuracy among answered is not monotonic
RANKED = [
    ("1", "1", 0.99),
    ("2", "2", 0.97),
    ("3", "8", 0.9),
    ("4", "4", 0.9),
    ("5", "5", 0.6),
    ("6", "0", 0.3),
]


def test_string_and_character_accuracy():
    assert scores.full_match(READINGS) == 0.25
    assert scores.case_folded_full_match(READINGS) == 0.5
    assert scores.char_accuracy(READINGS) == pytest.approx(7 / 9)
    assert scores.length_mismatches(READINGS) == 2


def test_accuracy_by_position_counts_missing_characters_as_wrong():
    assert scores.accuracy_by_position(READINGS) == [
        {"position": 1, "accuracy": 1.0, "count": 4},
        {"position": 2, "accuracy": 0.75, "count": 4},
        {"position": 3, "accuracy": 0.0, "count": 1},
    ]


def test_accuracy_by_length():
    assert scores.accuracy_by_length(READINGS) == [
        {"length": 2, "full_match": pytest.approx(1 / 3), "count": 3},
        {"length": 3, "full_match": 0.0, "count": 1},
    ]


def test_aligned_pairs_pad_the_shorter_side():
    assert scores.aligned_pairs("abc", "ax") == [("a", "a"), ("b", "x"), ("c", None)]
    assert scores.aligned_pairs("a", "ab") == [("a", "a"), (None, "b")]


def test_differences_and_character_kinds():
    assert scores.differences("O0l", "00") == [(1, "O", "0"), (3, "l", None)]
    assert [scores.kind(c) for c in ("0", "O", "o", None)] == ["digit", "upper", "lower", "none"]


def test_char_metrics_worst_first():
    # tp: a 4, b 3; fp: B 1 (read for b), b 1 (extra); fn: b 1, c 1 (missing)
    rows = scores.char_metrics(READINGS)
    assert [r["char"] for r in rows] == ["c", "B", "b", "a"]  # equal F1: larger support first
    by_char = {r["char"]: r for r in rows}
    assert by_char["a"] == {"char": "a", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4,
                            "tp": 4, "fp": 0, "fn": 0}
    assert by_char["b"] == {"char": "b", "precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4,
                            "tp": 3, "fp": 1, "fn": 1}
    assert by_char["B"] == {"char": "B", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0,
                            "tp": 0, "fp": 1, "fn": 0}
    assert by_char["c"] == {"char": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1,
                            "tp": 0, "fp": 0, "fn": 1}


def test_char_metrics_unequal_precision_and_recall():
    rows = {r["char"]: r for r in scores.char_metrics([("xx", "xy", 1.0), ("y", "x", 1.0)])}
    # x: tp 1, fp 1 (read for y), fn 1 (read as y); y: tp 0, fp 1, fn 1
    assert rows["x"]["precision"] == 0.5 and rows["x"]["recall"] == 0.5 and rows["x"]["support"] == 2
    rows = {r["char"]: r for r in scores.char_metrics([("ab", "ab", 1.0), ("a", "b", 1.0), ("a", "a", 1.0)])}
    assert rows["a"]["precision"] == 1.0 and rows["a"]["recall"] == pytest.approx(2 / 3)
    assert rows["a"]["f1"] == pytest.approx(0.8)
    assert rows["b"]["precision"] == 0.5 and rows["b"]["recall"] == 1.0 and rows["b"]["support"] == 1


def test_confusions_most_frequent_first_with_missing_and_extra():
    readings = READINGS + [("bb", "BB", 0.5)]
    assert scores.confusions(readings) == [
        {"truth": "b", "prediction": "B", "count": 3},
        {"truth": None, "prediction": "b", "count": 1},
        {"truth": "c", "prediction": None, "count": 1},
    ]
    assert scores.confusions(readings, top=1) == [{"truth": "b", "prediction": "B", "count": 3}]


def test_calibration_bins_and_ece():
    readings = [("a", "a", 0.9), ("a", "a", 0.9), ("a", "b", 0.95), ("a", "b", 0.2)]
    bins = scores.calibration_bins(readings)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 4
    assert bins[9]["count"] == 3 and bins[9]["accuracy"] == pytest.approx(2 / 3)
    assert bins[9]["confidence"] == pytest.approx(2.75 / 3)
    assert bins[2] == {"low": 0.2, "high": 0.3, "count": 1, "accuracy": 0.0, "confidence": 0.2}
    assert bins[5] == {"low": 0.5, "high": 0.6, "count": 0, "accuracy": None, "confidence": None}
    # 3/4 * |2/3 - 0.91667| + 1/4 * |0 - 0.2|
    assert scores.expected_calibration_error(readings) == pytest.approx(0.2375)
    assert scores.expected_calibration_error(READINGS) == pytest.approx((0.05 + 0.85 + 0.45 + 0.15) / 4)


def test_calibration_puts_confidence_one_in_the_last_bin():
    bins = scores.calibration_bins([("a", "a", 1.0), ("a", "a", 0.0)])
    assert bins[9]["count"] == 1 and bins[0]["count"] == 1
    assert scores.expected_calibration_error([("a", "a", 1.0), ("a", "b", 0.0)]) == 0.0


def test_coverage_curve_and_coverage_at():
    curve = scores.coverage_curve(RANKED)
    assert [(p["threshold"], p["answered"]) for p in curve] == [(0.3, 6), (0.6, 5), (0.9, 4), (0.97, 2), (0.99, 1)]
    assert [p["accuracy"] for p in curve] == pytest.approx([4 / 6, 0.8, 0.75, 1.0, 1.0])
    assert [p["coverage"] for p in curve] == pytest.approx([1.0, 5 / 6, 4 / 6, 2 / 6, 1 / 6])
    assert scores.coverage_at(RANKED, 0.95) == {"threshold": 0.95, "answered": 2, "coverage": pytest.approx(1 / 3),
                                                "accuracy": 1.0}
    assert scores.coverage_at(RANKED, 1.0) == {"threshold": 1.0, "answered": 0, "coverage": 0.0, "accuracy": None}


def test_recommended_threshold_is_the_smallest_that_reaches_the_target():
    best = scores.recommend_threshold(RANKED)  # 99%
    assert best["threshold"] == 0.97 and best["coverage"] == pytest.approx(1 / 3) and best["accuracy"] == 1.0
    best = scores.recommend_threshold(RANKED, target=0.8)  # 0.6 reaches 80%, 0.9 falls back to 75%
    assert best["threshold"] == 0.6 and best["coverage"] == pytest.approx(5 / 6)
    assert scores.recommend_threshold(RANKED, target=0.7)["threshold"] == 0.6
    assert scores.recommend_threshold([("a", "b", 0.99), ("a", "a", 0.5)]) is None


def test_stable_threshold_stays_above_the_target_for_every_higher_threshold():
    assert scores.stable_threshold(RANKED, target=0.8)["threshold"] == 0.97  # 0.9 gives 75%
    assert scores.stable_threshold(RANKED, target=0.7)["threshold"] == 0.6
    assert scores.stable_threshold(RANKED, target=0.6)["threshold"] == 0.3
    assert scores.stable_threshold([("a", "b", 0.99), ("a", "a", 0.5)]) is None
    text = report.render_markdown(scores.summarize(RANKED, target=0.8), {})
    assert "Answer only when confidence ≥ 0.6:" in text and "from 0.97 up every threshold" in text


def test_hardest_shows_wrong_least_confident_first_then_least_confident_right():
    assert scores.hardest(RANKED, 4) == [5, 2, 4, 3]  # one place in four kept for right ones
    assert scores.hardest(RANKED, 2) == [5, 2]
    assert scores.hardest(RANKED, 10) == [5, 2, 4, 3, 1, 0]
    assert scores.hardest([("a", "a", 0.5), ("b", "b", 0.4)], 4) == [1, 0]


def test_surest_wrong_lists_the_confident_mistakes_first():
    assert scores.surest_wrong(RANKED) == [2, 5]
    assert scores.surest_wrong(RANKED, 1) == [2]
    assert scores.surest_wrong([("a", "a", 0.5)]) == []


def test_summary_says_when_lengths_vary():
    figures = scores.summarize(READINGS)
    assert figures["lengths_vary"] is True and figures["count"] == 4
    assert scores.summarize(RANKED)["lengths_vary"] is False
    json.dumps(figures)  # plain values only


def _images(folder: Path, labels: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, label in enumerate(labels):
        path = folder / f"{label}_{i}.png"
        Image.new("RGB", (40, 16), (255, 255 - 40 * i, 255)).save(path)
        paths.append(path)
    return paths


def test_write_report_writes_markdown_and_figures(tmp_path):
    paths = _images(tmp_path / "images", [t for t, _, _ in READINGS])
    figures = report.write_report(READINGS, paths, tmp_path / "out", charset="abcB")
    out = tmp_path / "out"
    text = (out / "report.md").read_text()
    assert figures["figures"] == {"reliability": "reliability.png", "coverage": "coverage.png",
                                  "confusions": "confusions.png", "hardest": "hardest.png"}
    for name in figures["figures"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text
    assert "Answer only when confidence ≥ 0.95" in text and "### By length" in text
    surest = text.split("## Wrong readings, surest first")[1]  # wrong readings, the surest first
    assert surest.index("`ab_1.png`") < surest.index("`abc_2.png`") < surest.index("`ba_3.png`")
    assert "`ab_0.png`" not in surest  # read right
    assert json.loads((out / "figures.json").read_text())["full_match"] == 0.25


def test_write_report_without_errors_or_images(tmp_path):
    readings = [("ab", "ab", 0.99), ("cd", "cd", 0.7)]
    figures = report.write_report(readings, None, tmp_path)
    assert set(figures["figures"]) == {"reliability", "coverage"}  # nothing confused, no images
    text = (tmp_path / "report.md").read_text()
    assert "Every captcha can be answered" in text and "lowest confidence seen, 0.7," in text
    assert "### By length" not in text and "surest first" not in text  # nothing wrong
    report.write_report([("ab", "xb", 0.99), ("cd", "cd", 0.5)], None, tmp_path / "none")
    assert "No confidence threshold reaches 99%" in (tmp_path / "none" / "report.md").read_text()


class FakeReader:
    """Stands in for a loaded model: reads every file as its label with one letter upper-cased."""

    path = Path("models/fake/model.keras")
    charset = "abc"
    length = None  # labels of any length
    ignore_case = False

    def predict_files(self, paths, batch_size=256, constraint=None):
        for i, path in enumerate(paths):
            label = path.name.split("_")[0]
            yield path, Prediction(label if i % 2 else label.upper(), 0.5 + 0.1 * i), None


def test_cli_evaluate_report_and_json(tmp_path, monkeypatch, capsys):
    _images(tmp_path / "data", ["ab", "ba", "cc", "ac"])
    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, path=None, keep_colour=None: FakeReader()))
    args = ["evaluate", "--data", str(tmp_path / "data")]
    assert cli.main(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"full_match": 0.5, "char_accuracy": 0.5, "count": 4}
    assert cli.main(args + ["--report", str(tmp_path / "report"), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["full_match"] == 0.5 and figures["case_folded_full_match"] == 1.0
    assert figures["skipped"] == [] and (tmp_path / "report" / "hardest.png").exists()
    assert cli.main(args + ["--ignore-case", "--report", str(tmp_path / "folded")]) == 0
    assert "full-match 1.0000" in capsys.readouterr().out
