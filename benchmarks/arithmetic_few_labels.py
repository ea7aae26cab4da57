"""Arithmetic captchas from few labels: answers right on fresh test images after a short
training on N labelled images (plus unlabelled ones), from the base reader or from a model
pretrained on synthetic arithmetic in another style than the target's.

    python benchmarks/arithmetic_few_labels.py --work A                       # every row, drawn afresh
    python benchmarks/arithmetic_few_labels.py --work A --rows arithmetic --init A/pretrained

The target (a stand-in for a real site's style: no real arithmetic set is here) is drawn by
`caocrvfy generate --arithmetic --style STYLE`: LABELS labelled images, UNLABELLED unlabelled
ones and TEST test images, each in its own folder under WORK (kept and reused: the `captcha`
library cannot redraw them). The pretraining set is drawn in PRETRAIN_STYLE (default: varied,
the target's default being the captcha library's), so that the pretrained model has never seen
the target's look.

Rows (each the user's command in a fresh process, `caocrvfy train --data LABELLED --unlabelled
UNLABELLED --time-limit MINUTES`, with the row's option added):
- base: no option (the default start, models/base)
- arithmetic: `--init PRETRAINED`, where PRETRAINED is `--init` or, without it, trained here
  first: `caocrvfy train --data PRETRAIN --schedule cosine --time-limit PRETRAIN_MINUTES`
- arithmetic-zero-shot: PRETRAINED with no training on the target

Columns: answers right (`caocrvfy evaluate --solve`'s figure: the best expression read) and from
the free readings, readings that are not expressions, and the commonest character confusions
among wrong readings of the right length.
Writes benchmarks/results/arithmetic-few-labels-DATE.json.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import common

ROWS = ("base", "arithmetic", "arithmetic-zero-shot")


def draw(folder: Path, count: int, style: str) -> Path:
    """`caocrvfy generate --arithmetic` into FOLDER (topped up to COUNT when it exists)."""
    subprocess.run(common.module_command("caocrvfy", "generate", "--arithmetic", "--style", style,
                                         "--count", str(count), "--out", str(folder)),
                   check=True, env=common.module_env(), cwd=common.PROJECT_ROOT)
    return folder


def score_answers(run: Path, test_dir: Path) -> dict:
    """Answers right on TEST_DIR as `evaluate --solve` counts them (the best expression read), the
    same from the free readings, the readings that are not expressions, and the top confusions of
    wrong readings of the right length."""
    from caocrvfy.evaluation import read_labelled_folder
    from caocrvfy.evaluation.scores import answers, confusions
    from caocrvfy.inference import Constraint, Predictor

    reader = Predictor.load(run)  # read twice: with the expression held, and free
    records, _, skipped = read_labelled_folder(reader, test_dir, constraint=Constraint.of(expression=True))
    free, _, _ = read_labelled_folder(reader, test_dir)
    (right, unsolved, _), (free_right, free_unsolved, _) = answers(records), answers(free)
    count = max(len(records), 1)
    return {"answer_accuracy": right / count, "count": len(records), "skipped": len(skipped),
            "not_expressions": unsolved, "free_answer_accuracy": free_right / count,
            "free_not_expressions": free_unsolved,
            "confusions": confusions([r for r in records if len(r[0]) == len(r[1])], top=8)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_results_option(p)
    p.add_argument("--work", type=Path, help="the drawn folders and the runs (default: a new temp folder)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"some of {','.join(ROWS)} (default all)")
    p.add_argument("--labels", type=int, default=200, help="labelled target images (default 200)")
    p.add_argument("--unlabelled", type=int, default=2000, help="unlabelled target images (default 2000)")
    p.add_argument("--test", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--style", default="captcha", help="the target's style (default captcha)")
    p.add_argument("--minutes", type=float, default=10, help="each row's --time-limit (default 10)")
    p.add_argument("--init", type=Path, help="a pretrained arithmetic model (default: pretrain one here)")
    p.add_argument("--pretrain-style", default="varied", help="the pretraining set's style (default varied)")
    p.add_argument("--pretrain-count", type=int, default=60000, help="pretraining images (default 60000)")
    p.add_argument("--pretrain-minutes", type=float, default=35, help="pretraining --time-limit (default 35)")
    p.add_argument("--train-option", action="append", default=[],
                   help="an option added to every target training (repeatable), e.g. --train-option=--seed=1")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    rows = [r for r in args.rows.split(",") if r]
    if unknown := sorted(set(rows) - set(ROWS)):
        p.error(f"unknown rows {unknown}: choose from {', '.join(ROWS)}")
    if args.init is not None and not args.init.exists():
        p.error(f"--init {args.init} does not exist: give a trained run folder or drop --init to pretrain one")
    work = common.work_folder(args.work, "arithmetic-")
    labelled = draw(work / f"labelled-{args.labels}", args.labels, args.style)
    unlabelled = draw(work / f"unlabelled-{args.unlabelled}", args.unlabelled, args.style)
    test = draw(work / f"test-{args.test}", args.test, args.style)

    results = {"target": {"style": args.style, "labelled": args.labels, "unlabelled": args.unlabelled,
                          "test": args.test}, "rows": []}
    pretrained = args.init.resolve() if args.init else None
    if pretrained is None and {"arithmetic", "arithmetic-zero-shot"} & set(rows):
        data = draw(work / f"pretrain-{args.pretrain_style}-{args.pretrain_count}", args.pretrain_count,
                    args.pretrain_style)
        pretrained = work / "pretrained"
        run = common.train_run("pretrain", ["--data", str(data), "--schedule", "cosine", "--time-limit",
                                            str(args.pretrain_minutes)], pretrained, echo=True)
        if not run["ok"]:
            return 1
        results["pretraining"] = run | {"style": args.pretrain_style, "images": args.pretrain_count}
    common_options = ["--data", str(labelled), "--unlabelled", str(unlabelled), "--time-limit", str(args.minutes),
                      *args.train_option]
    for row in rows:
        if row == "arithmetic-zero-shot":
            result = {"name": row, "run": str(pretrained)}
        else:
            options = common_options + (["--init", str(pretrained)] if row == "arithmetic" else [])
            result = common.train_run(row, options, work / row, echo=True)
            if not result["ok"]:
                results["rows"].append(result)
                continue
        result |= score_answers(Path(result["run"]), test)
        top = ", ".join(f"{c['truth']}->{c['prediction']} {c['count']}" for c in result["confusions"])
        print(f"[{row}] answers right {result['answer_accuracy']:.4f} of {result['count']} (free readings "
              f"{result['free_answer_accuracy']:.4f}); {result['not_expressions']} not expressions; {top}",
              flush=True)
        results["rows"].append(result)
    common.write_result("arithmetic-few-labels", results, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
