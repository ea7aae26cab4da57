"""What a model gets wrong, as report.md with its figures, for a labelled folder.

    caocrvfy evaluate --model models/captcha-6x62 --data data/test-6x62 --report reports/6x62

The maths live in `scores`, the plots in `figures`; `write_report` needs the image paths only
for the grid of hardest examples.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from caocrvfy.evaluation.figures import plot_confusions, plot_coverage, plot_hardest, plot_reliability
from caocrvfy.evaluation.scores import TARGET_ACCURACY, Record, hardest, kind, summarize, surest_wrong

log = logging.getLogger(__name__)


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
    if f.get("surest_wrong"):
        out += ["", "## Wrong readings, surest first", "",
                "A wrong reading the model is sure of is often a wrong label: look at these files first "
                "and correct the label where the image agrees with the reading.", ""]
        out += _table(["file", "label", "read as", "confidence"],
                      [[f"`{r['file']}`", f"`{r['truth']}`", f"`{r['prediction']}`", f"{r['confidence']:.4f}"]
                       for r in f["surest_wrong"]])
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
    figures["surest_wrong"] = [{"file": paths[i].name if paths else f"reading {i + 1}", "truth": records[i][0],
                                "prediction": records[i][1], "confidence": records[i][2]}
                               for i in surest_wrong(records)]
    if paths:
        pngs["hardest"] = plot_hardest(records, paths, picked, out / "hardest.png")
    names = {k: v.name for k, v in pngs.items() if v}
    figures["report"] = str(out / "report.md")
    figures["figures"] = names
    (out / "report.md").write_text(render_markdown(figures, names, title, about), encoding="utf-8")
    (out / "figures.json").write_text(json.dumps(figures, indent=1), encoding="utf-8")
    log.info(f"wrote {out / 'report.md'} with {len(names)} figures")
    return figures
