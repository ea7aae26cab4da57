"""The figures of an error report: pure functions over records (truth, prediction, confidence),
checkable against hand-computed values.

Characters are compared position by position: a character read where the truth has another
is a false positive for the one read and a false negative for the true one; characters read
beyond the true length are false positives, true characters beyond the read length false
negatives. Confidence is the model's probability of the whole string (caocrvfy.inference.decoding).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from caocrvfy.data.charset import fold_case
from caocrvfy.errors import DataError
from caocrvfy.inference.arithmetic import solve

Record = tuple[str, str, float]  # truth, prediction, confidence

TARGET_ACCURACY = 0.99
CALIBRATION_BINS = 10
SHOWN_THRESHOLDS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999)
MISSING = None  # the other side of a confusion when the lengths differ


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


# ---------------------------------------------------------------- accuracy


def full_match(records: Sequence[Record]) -> float:
    return _ratio(sum(t == p for t, p, _ in records), len(records))


def case_folded_full_match(records: Sequence[Record]) -> float:
    return _ratio(sum(fold_case(t) == fold_case(p) for t, p, _ in records), len(records))


def _right_at_position(records: Sequence[Record]) -> int:
    return sum(sum(a == b for a, b in zip(t, p)) for t, p, _ in records)


def char_accuracy(records: Sequence[Record]) -> float:
    """Share of true characters read right at their position (as `evaluate_folder`)."""
    return _ratio(_right_at_position(records), sum(len(t) for t, _, _ in records))


def char_precision(records: Sequence[Record]) -> float:
    """Share of the characters read that are right at their position."""
    return _ratio(_right_at_position(records), sum(len(p) for _, p, _ in records))


def accuracy_by_position(records: Sequence[Record]) -> list[dict]:
    """Per position (1-based) of the truth: share read right, over the strings that long."""
    longest = max((len(t) for t, _, _ in records), default=0)
    rows = []
    for i in range(longest):
        pairs = [(t[i], p[i] if i < len(p) else MISSING) for t, p, _ in records if len(t) > i]
        rows.append({"position": i + 1, "accuracy": _ratio(sum(a == b for a, b in pairs), len(pairs)),
                     "count": len(pairs)})
    return rows


def accuracy_by_length(records: Sequence[Record]) -> list[dict]:
    """Full-match per true length, shortest first."""
    groups: dict[int, list[bool]] = {}
    for t, p, _ in records:
        groups.setdefault(len(t), []).append(t == p)
    return [{"length": n, "full_match": _ratio(sum(g), len(g)), "count": len(g)}
            for n, g in sorted(groups.items())]


def length_mismatches(records: Sequence[Record]) -> int:
    """Strings read with more or fewer characters than the truth (a CTC head can do this)."""
    return sum(len(t) != len(p) for t, p, _ in records)


# ---------------------------------------------------------------- characters


def aligned_pairs(truth: str, prediction: str) -> list[tuple[str | None, str | None]]:
    """(true, read) per position over the longer string; None where one side has ended."""
    n = max(len(truth), len(prediction))
    return [(truth[i] if i < len(truth) else MISSING, prediction[i] if i < len(prediction) else MISSING)
            for i in range(n)]


def char_metrics(records: Sequence[Record]) -> list[dict]:
    """Precision, recall, F1 and support (true occurrences) per character, worst F1 first.

    A ratio whose denominator is zero counts as 0 (a character never read has precision 0).
    Ties are broken by larger support first, then by character.
    """
    tp, fp, fn = Counter(), Counter(), Counter()
    for t, p, _ in records:
        for a, b in aligned_pairs(t, p):
            if a == b:
                tp[a] += 1
                continue
            if b is not MISSING:
                fp[b] += 1
            if a is not MISSING:
                fn[a] += 1
    rows = []
    for c in set(tp) | set(fp) | set(fn):
        precision = _ratio(tp[c], tp[c] + fp[c])
        recall = _ratio(tp[c], tp[c] + fn[c])
        rows.append({"char": c, "precision": precision, "recall": recall,
                     "f1": _ratio(2 * precision * recall, precision + recall),
                     "support": tp[c] + fn[c], "tp": tp[c], "fp": fp[c], "fn": fn[c]})
    return sorted(rows, key=lambda r: (r["f1"], -r["support"], r["char"]))


def confusions(records: Sequence[Record], top: int | None = None) -> list[dict]:
    """(true, read, count) over the positions read wrong, most frequent first.

    `truth` or `prediction` is None for a character missing from, or added to, the reading.
    """
    counts = Counter((a, b) for t, p, _ in records for a, b in aligned_pairs(t, p) if a != b)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0] or "", kv[0][1] or ""))
    return [{"truth": a, "prediction": b, "count": n} for (a, b), n in ordered[:top]]


def answers(records: Sequence[Record]) -> tuple[int, int, list[tuple[int, str]]]:
    """Arithmetic captchas (`evaluate --solve`): (readings whose answer is the truth's answer,
    readings that are not expressions, [(index, why)] of the records whose truth is neither an
    expression nor an answer: left out of both counts)."""
    right, unsolved, bad_truths = 0, 0, []
    for i, (truth, reading, _) in enumerate(records):
        try:
            wanted = solve(truth)
        except DataError as exc:
            bad_truths.append((i, str(exc)))
            continue
        try:
            right += solve(reading) == wanted
        except DataError:
            unsolved += 1
    return right, unsolved, bad_truths


# ---------------------------------------------------------------- confidence


def calibration_bins(records: Sequence[Record], bins: int = CALIBRATION_BINS) -> list[dict]:
    """Equal-width confidence bins on [0, 1] (the last one closed) with accuracy and mean
    confidence of the strings that fall in each; empty bins have count 0 and None values."""
    members: list[list[Record]] = [[] for _ in range(bins)]
    for record in records:
        members[min(max(int(record[2] * bins), 0), bins - 1)].append(record)
    rows = []
    for k, group in enumerate(members):
        n = len(group)
        rows.append({"low": k / bins, "high": (k + 1) / bins, "count": n,
                     "accuracy": sum(t == p for t, p, _ in group) / n if n else None,
                     "confidence": sum(c for _, _, c in group) / n if n else None})
    return rows


def expected_calibration_error(records: Sequence[Record], bins: int = CALIBRATION_BINS) -> float:
    """Sum over bins of (share of strings) x |accuracy - mean confidence|, full-string correctness."""
    total = len(records)
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
               for b in calibration_bins(records, bins) if b["count"])


def coverage_at(records: Sequence[Record], threshold: float) -> dict:
    """Answering only when confidence >= threshold: share answered and accuracy among them."""
    answered = [(t, p) for t, p, c in records if c >= threshold]
    return {"threshold": threshold, "answered": len(answered), "coverage": _ratio(len(answered), len(records)),
            "accuracy": sum(t == p for t, p in answered) / len(answered) if answered else None}


def coverage_curve(records: Sequence[Record]) -> list[dict]:
    """`coverage_at` for every distinct confidence as the threshold, lowest threshold first."""
    ranked = sorted(records, key=lambda r: -r[2])
    points, right = [], 0
    for i, (t, p, c) in enumerate(ranked):
        right += t == p
        if i + 1 == len(ranked) or ranked[i + 1][2] != c:  # last of a run of equal confidences
            points.append({"threshold": c, "answered": i + 1, "coverage": (i + 1) / len(ranked),
                           "accuracy": right / (i + 1)})
    return points[::-1]


def recommend_threshold(records: Sequence[Record], target: float = TARGET_ACCURACY) -> dict | None:
    """The smallest threshold whose accuracy on the answered strings reaches `target`, or None."""
    return next((p for p in coverage_curve(records) if p["accuracy"] >= target), None)


def stable_threshold(records: Sequence[Record], target: float = TARGET_ACCURACY) -> dict | None:
    """The smallest threshold from which every higher one also reaches `target`, or None.

    Accuracy among answered is not monotonic in the threshold, so the smallest threshold that
    reaches the target can sit just below thresholds that miss it; this one does not."""
    best = None
    for point in reversed(coverage_curve(records)):
        if point["accuracy"] < target:
            break
        best = point
    return best


def hardest(records: Sequence[Record], count: int = 24) -> list[int]:
    """Indices to show: wrong readings (least confident first), then the least confident right
    ones; a quarter of the places are kept for right ones when there are enough of them."""
    order = sorted(range(len(records)), key=lambda i: records[i][2])
    wrong = [i for i in order if records[i][0] != records[i][1]]
    right = [i for i in order if records[i][0] == records[i][1]]
    n_wrong = min(len(wrong), max(count - min(count // 4, len(right)), 0))
    return wrong[:n_wrong] + right[: count - n_wrong]


def surest_wrong(records: Sequence[Record], count: int = 20) -> list[int]:
    """Indices of the wrong readings, most confident first: where a label is most likely wrong."""
    wrong = [i for i, (truth, reading, _) in enumerate(records) if truth != reading]
    return sorted(wrong, key=lambda i: -records[i][2])[:count]


# ---------------------------------------------------------------- all figures


def summarize(records: Sequence[Record], target: float = TARGET_ACCURACY, top: int = 20) -> dict:
    """Every figure of the report as plain JSON-ready values."""
    if not records:
        raise DataError("there are no readings to report on: give a folder of labelled images.")
    lengths = {len(t) for t, _, _ in records}
    return {
        "count": len(records),
        "full_match": full_match(records),
        "char_accuracy": char_accuracy(records),
        "case_folded_full_match": case_folded_full_match(records),
        "mean_confidence": sum(c for _, _, c in records) / len(records),
        "length_mismatches": length_mismatches(records),
        "lengths_vary": len(lengths) > 1,
        "by_position": accuracy_by_position(records),
        "by_length": accuracy_by_length(records),
        "characters": char_metrics(records),
        "confusions": confusions(records, top),
        "calibration": {"ece": expected_calibration_error(records), "bins": calibration_bins(records)},
        "coverage": {"target": target, "recommended": recommend_threshold(records, target),
                     "stable": stable_threshold(records, target),
                     "table": [coverage_at(records, t) for t in SHOWN_THRESHOLDS]},
    }



def kind(c: str | None) -> str:
    """Digit, upper or lower: plot fonts draw `0` and `O`, `1`, `l` and `I` nearly alike."""
    if c is None:
        return "none"
    return "digit" if c.isdigit() else "upper" if c.isupper() else "lower" if c.islower() else "other"


def _named(c: str | None) -> str:
    return "∅ none" if c is None else f"{c} {kind(c)}"


def differences(truth: str, prediction: str) -> list[tuple[int, str | None, str | None]]:
    """(position from 1, true, read) where the aligned strings differ."""
    return [(i + 1, a, b) for i, (a, b) in enumerate(aligned_pairs(truth, prediction)) if a != b]
