"""What a model gets wrong: error figures, plots and a markdown report for a labelled folder.

    caocrvfy evaluate --model models/captcha-6x62 --data data/test-6x62 --report reports/6x62

The maths are pure functions over records `(truth, prediction, confidence)`, so they can be
checked against hand-computed values; `write_report` adds the figures (matplotlib, Agg) and
report.md, and needs the image paths only for the grid of hardest examples.

Characters are compared position by position: a character read where the truth has another
is a false positive for the one read and a false negative for the true one; characters read
beyond the true length are false positives, true characters beyond the read length false
negatives. Confidence is the model's probability of the whole string (see predict.py).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

from caocrvfy.charset import fold_case
from caocrvfy.data import DataError

log = logging.getLogger(__name__)

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


def char_accuracy(records: Sequence[Record]) -> float:
    """Share of true characters read right at their position (as `evaluate_folder`)."""
    right = sum(sum(a == b for a, b in zip(t, p)) for t, p, _ in records)
    return _ratio(right, sum(len(t) for t, _, _ in records))


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


# ---------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def plot_reliability(figures: dict, out_png: Path) -> Path:
    plt = _pyplot()
    bins = figures["calibration"]["bins"]
    width = bins[0]["high"] - bins[0]["low"]
    mids = [b["low"] + width / 2 for b in bins]
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(6.5, 7), height_ratios=[3, 1.3], sharex=True)
    filled = [(m, b) for m, b in zip(mids, bins) if b["count"]]
    ax.bar([m for m, _ in filled], [b["accuracy"] for _, b in filled], width=width * 0.9,
           color="tab:blue", edgecolor="black", label="accuracy in bin")
    ax.scatter([m for m, _ in filled], [b["confidence"] for _, b in filled], color="tab:red",
               zorder=3, label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of strings read right")
    fig.suptitle(f"Reliability (ECE {figures['calibration']['ece']:.4f}, {len(bins)} bins)")
    # above the plot: inside it the legend hides the bars of one calibration or the other
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8.5, frameon=False)
    ax.grid(alpha=0.3)
    axn.bar(mids, [b["count"] for b in bins], width=width * 0.9, color="grey", edgecolor="black")
    axn.set_yscale("symlog", linthresh=1)
    axn.set_ylabel("strings (log)")
    axn.set_xlabel("confidence")
    axn.set_xlim(0, 1)
    axn.set_xticks([b["low"] for b in bins] + [1.0])
    axn.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_coverage(records: Sequence[Record], figures: dict, out_png: Path) -> Path:
    """Share answered and accuracy among answered against the threshold, and against each other.

    The threshold axis is logit-scaled: confidences crowd near 1, where the choice is made."""
    plt = _pyplot()
    curve = coverage_curve(records)
    target = figures["coverage"]["target"]
    best = figures["coverage"]["recommended"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    eps = 1e-6
    xs = [min(max(p["threshold"], eps), 1 - eps) for p in curve]
    # a threshold just above one confidence answers the same as the next one up: step "pre"
    ax.step(xs, [p["coverage"] for p in curve], where="pre", label="share answered")
    ax.step(xs, [p["accuracy"] for p in curve], where="pre", label="accuracy among answered")
    ax.axhline(target, color="grey", ls=":", lw=1, label=f"{target:.0%} accuracy")
    ax.set_xscale("logit")
    ax.set_xlabel("threshold t (answer when confidence ≥ t), logit scale")
    ax.set_ylim(0, 1.02)
    ax.set_title("Answering only confident readings")
    ax2.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], color="tab:orange")
    ax2.axhline(target, color="grey", ls=":", lw=1)
    ax2.set_xlabel("share answered (coverage)")
    ax2.set_ylabel("accuracy among answered")
    ax2.set_xlim(0, 1.02)
    low = min(p["accuracy"] for p in curve)
    ax2.set_ylim(max(0.0, min(low, target) - 0.02), 1.005)
    ax2.set_title("Accuracy against coverage")
    if best:
        ax.axvline(min(max(best["threshold"], eps), 1 - eps), color="red", ls="--", lw=1,
                   label=f"t = {best['threshold']:.6g}")
        ax2.scatter([best["coverage"]], [best["accuracy"]], color="red", zorder=3,
                    label=f"t = {best['threshold']:.6g}: {best['coverage']:.1%} answered")
        stable = figures["coverage"]["stable"]
        if stable and stable["threshold"] != best["threshold"]:
            ax2.scatter([stable["coverage"]], [stable["accuracy"]], facecolors="none", edgecolors="red",
                        zorder=3, label=f"t = {stable['threshold']:.6g}: {stable['coverage']:.1%} answered, "
                                        "every higher t stays above")
        ax2.legend(loc="lower left", fontsize=9)
    ax.legend(loc="lower left", fontsize=9)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_confusions(figures: dict, out_png: Path, charset: str = "") -> Path | None:
    """Heat map of the most frequent substitutions (true rows, read columns); None if none."""
    pairs = [c for c in figures["confusions"] if c["truth"] is not None and c["prediction"] is not None]
    if not pairs:
        return None
    plt = _pyplot()
    order = {c: i for i, c in enumerate(charset)}
    key = lambda c: (order.get(c, len(order)), c)  # noqa: E731
    rows = sorted({c["truth"] for c in pairs}, key=key)
    cols = sorted({c["prediction"] for c in pairs}, key=key)
    grid = [[0] * len(cols) for _ in rows]
    for c in pairs:
        grid[rows.index(c["truth"])][cols.index(c["prediction"])] = c["count"]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(cols) + 3), max(4, 0.4 * len(rows) + 2.5)))
    image = ax.imshow(grid, cmap="Reds", vmin=0)
    peak = max(max(r) for r in grid)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=9,
                        color="white" if v > peak * 0.6 else "black")
    ax.set_xticks(range(len(cols)), [_named(c) for c in cols], family="monospace", fontsize=10,
                  rotation=90)
    ax.set_yticks(range(len(rows)), [_named(c) for c in rows], family="monospace", fontsize=10)
    ax.set_xlabel("read as")
    ax.set_ylabel("true character")
    ax.set_title(f"Most frequent confusions (top {len(pairs)})")
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_hardest(records: Sequence[Record], paths: Sequence[Path], indices: list[int], out_png: Path,
                 columns: int = 4) -> Path | None:
    """Grid of images with truth, reading and confidence; wrong readings titled in red."""
    if not indices:
        return None
    from PIL import Image

    plt = _pyplot()
    n_rows = -(-len(indices) // columns)
    with Image.open(paths[indices[0]]) as im:
        aspect = im.height / im.width
    height = (1.2 + 3.3 * aspect) * n_rows + 0.5  # four title lines above each image
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.6 * columns, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        truth, read, confidence = records[i]
        with Image.open(paths[i]) as im:
            ax.imshow(im.convert("RGB"))
        diffs = differences(truth, read)
        # carets under the differing positions, then what they are: fonts draw O and 0 alike
        marks = "".join("^" if a != b else " " for a, b in aligned_pairs(truth, read)).rstrip()
        said = ", ".join(f"{_named(a)}→{_named(b)}" for _, a, b in diffs[:2]) + (" …" if len(diffs) > 2 else "")
        lines = [f"true {truth}", f"read {read or '∅'}  conf {confidence:.3f}"]
        lines += [f"     {marks}", said] if diffs else ["", "right"]
        ax.set_title("\n".join(lines), family="monospace", fontsize=9.5, loc="left",
                     color="tab:red" if diffs else "tab:green")
    fig.suptitle("Hardest examples: wrong readings (red), least confident first, "
                 "then the least confident right ones (green)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


# ---------------------------------------------------------------- markdown


def _code(c: str | None) -> str:
    return "(none)" if c is None else "`" + c.replace("|", "\\|") + "` " + kind(c)


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in rows]]


def _findings(f: dict) -> list[str]:
    """A few sentences a reader sees first: where the errors are and what to do about them."""
    n = f["count"]
    wrong = round(n * (1 - f["full_match"]))
    lines = [f"- {wrong} of {n} captchas are read wrong ({_pct(1 - f['full_match'])})."]
    case_only = f["case_folded_full_match"] - f["full_match"]
    if case_only > 0:
        lines.append(f"- {_pct(case_only)} of captchas are wrong only in upper/lower case "
                     f"(case-folded full-match {_pct(f['case_folded_full_match'])}).")
    if f["length_mismatches"]:
        n = f["length_mismatches"]
        lines.append(f"- {n} {'reading has' if n == 1 else 'readings have'} a different length from the "
                     "truth (characters dropped or doubled), which shifts every later position.")
    subs = f["confusions"][:5]
    if subs:
        lines.append("- Most frequent confusions: " + ", ".join(
            f"{_code(c['truth'])} → {_code(c['prediction'])} ({c['count']})" for c in subs) + ".")
    worst = [c for c in f["characters"] if c["support"]][:5]
    if worst:
        lines.append("- Hardest characters (lowest F1): " + ", ".join(
            f"{_code(c['char'])} ({c['f1']:.3f})" for c in worst) + ".")
    gap = f["mean_confidence"] - f["full_match"]
    ece = f["calibration"]["ece"]
    if abs(gap) >= 0.02:
        advice = ("read it as a ranking, not a probability" if ece >= 0.05
                  else "close enough to read as a probability")
        lines.append(f"- The model is {'over' if gap > 0 else 'under'}-confident: mean confidence "
                     f"{f['mean_confidence']:.3f} against {f['full_match']:.3f} of strings read right "
                     f"(ECE {ece:.4f}); {advice}.")
    else:
        lines.append(f"- Confidence is calibrated: mean confidence {f['mean_confidence']:.3f} against "
                     f"{f['full_match']:.3f} of strings read right (ECE {ece:.4f}).")
    lines.append(f"- {_threshold_advice(f)}")
    return lines


def _threshold_advice(f: dict) -> str:
    best, target = f["coverage"]["recommended"], f["coverage"]["target"]
    if best is None:
        return (f"No confidence threshold reaches {_pct(target, 0)} accuracy on the captchas it answers: "
                "even the most confident readings are wrong too often.")
    if best["answered"] == f["count"]:
        return (f"Every captcha can be answered: accuracy is already {_pct(best['accuracy'])} "
                f"(≥ {_pct(target, 0)}) without a threshold; the smallest threshold is the lowest "
                f"confidence seen, {best['threshold']:.6g}, at 100% coverage.")
    advice = (f"Answer only when confidence ≥ {best['threshold']:.6g}: the smallest threshold with "
              f"at least {_pct(target, 0)} accuracy on the captchas answered gives {_pct(best['accuracy'])} "
              f"accuracy on {_pct(best['coverage'], 1)} of captchas ({best['answered']} of {f['count']}).")
    stable = f["coverage"]["stable"]
    if stable and stable["threshold"] != best["threshold"]:
        advice += (f" Some higher thresholds fall below {_pct(target, 0)} again; from "
                   f"{stable['threshold']:.6g} up every threshold stays above it "
                   f"({_pct(stable['accuracy'])} accuracy on {_pct(stable['coverage'], 1)}).")
    return advice


def render_markdown(f: dict, pngs: dict[str, str], title: str = "Error report",
                    about: list[str] | None = None) -> str:
    out = [f"# {title}", ""]
    out += [*(about or []), ""] if about else []
    out += ["## Findings", "", *_findings(f), ""]
    out += ["## Accuracy", ""]
    out += _table(["measure", "value"], [
        ["full-match (whole string right)", _pct(f["full_match"])],
        ["character accuracy (position-aligned)", _pct(f["char_accuracy"])],
        ["case-folded full-match", _pct(f["case_folded_full_match"])],
        ["readings of the wrong length", str(f["length_mismatches"])],
        ["captchas", str(f["count"])],
    ])
    out += ["", "### By position in the string", ""]
    out += _table(["position", "accuracy", "captchas"],
                  [[str(r["position"]), _pct(r["accuracy"]), str(r["count"])] for r in f["by_position"]])
    if f["lengths_vary"]:
        out += ["", "### By length of the true string", ""]
        out += _table(["length", "full-match", "captchas"],
                      [[str(r["length"]), _pct(r["full_match"]), str(r["count"])] for r in f["by_length"]])
    out += ["", "## Confidence", "",
            f"Expected calibration error (ECE, {len(f['calibration']['bins'])} equal-width bins, "
            f"whole-string correctness): **{f['calibration']['ece']:.4f}**.", ""]
    if "reliability" in pngs:
        out += [f"![reliability diagram]({pngs['reliability']})", ""]
    cov = f["coverage"]
    out += [f"Mean confidence {f['mean_confidence']:.4f} against full-match {f['full_match']:.4f}.", "",
            f"**Recommended threshold:** {_threshold_advice(f)}", ""]
    if "coverage" in pngs:
        out += [f"![coverage curve]({pngs['coverage']})", ""]
    out += _table(["threshold", "answered", "share answered", "accuracy among answered"],
                  [[f"{r['threshold']:g}", str(r["answered"]), _pct(r["coverage"], 1), _pct(r["accuracy"])]
                   for r in cov["table"]])
    out += ["", "## Confusions", "",
            "Truth and reading are compared position by position; (none) marks a character "
            "missing from, or added to, the reading.", ""]
    out += _table(["true", "read as", "count"],
                  [[_code(c["truth"]), _code(c["prediction"]), str(c["count"])] for c in f["confusions"]])
    if "confusions" in pngs:
        out += ["", f"![confusion heat map]({pngs['confusions']})"]
    chars = f["characters"]
    rows = [[_code(c["char"]), f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}",
             str(c["support"]), str(c["fp"]), str(c["fn"])] for c in chars]
    header = ["char", "precision", "recall", "F1", "support", "FP", "FN"]
    out += ["", "## Characters, worst first", ""]
    out += _table(header, rows[:15])
    if len(rows) > 15:
        out += ["", f"<details><summary>All {len(rows)} characters</summary>", "", *_table(header, rows),
                "", "</details>"]
    if "hardest" in pngs:
        out += ["", "## Hardest examples", "",
                "Wrong readings first (least confident first), then the least confident right ones.",
                "", f"![hardest examples]({pngs['hardest']})"]
    return "\n".join(out) + "\n"


def write_report(records: Sequence[Record], paths: Sequence[Path] | None, out_dir: str | Path,
                 title: str = "Error report", about: list[str] | None = None, charset: str = "",
                 examples: int = 24, target: float = TARGET_ACCURACY) -> dict:
    """Writes report.md and its PNGs into `out_dir`; returns the figures with file names added.

    `paths` (the image of each record) is needed only for the grid of hardest examples."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = summarize(records, target)
    pngs = {"reliability": plot_reliability(figures, out / "reliability.png"),
            "coverage": plot_coverage(records, figures, out / "coverage.png"),
            "confusions": plot_confusions(figures, out / "confusions.png", charset)}
    picked = hardest(records, examples)
    figures["hardest"] = [{"file": str(paths[i]) if paths else None, "truth": records[i][0],
                           "prediction": records[i][1], "confidence": records[i][2]} for i in picked]
    if paths:
        pngs["hardest"] = plot_hardest(records, paths, picked, out / "hardest.png")
    names = {k: v.name for k, v in pngs.items() if v}
    figures["report"] = str(out / "report.md")
    figures["figures"] = names
    (out / "report.md").write_text(render_markdown(figures, names, title, about), encoding="utf-8")
    (out / "figures.json").write_text(json.dumps(figures, indent=1), encoding="utf-8")
    log.info(f"wrote {out / 'report.md'} with {len(names)} figures")
    return figures
