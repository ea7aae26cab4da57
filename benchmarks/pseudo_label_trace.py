"""How right the pseudo-labels are, refresh by refresh, in one run of the user's command.

    python benchmarks/pseudo_label_trace.py ../shared/datasets/swust-cas-2019 --count 100 --minutes 10
    python benchmarks/pseudo_label_trace.py DIR --count 100 --train-option=--seed=1

The learning-curve split (`benchmarks/learning_curve.py`: every 5th file a test file, COUNT
labelled images drawn with seed 0 from the rest, the remainder unlabelled), then
`caocrvfy train --data LABELLED --unlabelled REST --time-limit MINUTES` in this process. After
each refresh of the pseudo-labels (`caocrvfy.training.pseudo_labels.PseudoLabels`) the readings
it trained on are scored against the unlabelled files' own labels, which the training never
sees: how many were kept, how many of those are wrong, and the commonest character confusions
among them (true>read, case-folded). This shows whether a confusion enters the pseudo-labels
and grows there (self-training locking it in) or comes and goes.

Prints a line per refresh and the test files' full-match at the end; writes
benchmarks/results/pseudo-label-trace-NAME-DATE.json.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import common
from learning_curve import test_side, unlabelled_side
from own_captchas import make_side


def trace_refreshes(truth: list[str], rows: list[dict]) -> None:
    """Wraps PseudoLabels.on_epoch_end so that each refresh appends a row scored against `truth`."""
    from caocrvfy.data.charset import fold_case
    from caocrvfy.training.pseudo_labels import PseudoLabels

    refresh = PseudoLabels.on_epoch_end

    def traced(self, epoch, logs=None):
        before = self.readings
        refresh(self, epoch, logs)
        if self.readings is before:  # no refresh after this epoch
            return
        if len(self.readings) != len(truth):
            raise SystemExit(f"{len(self.readings)} unlabelled images read, {len(truth)} labels: "
                             "a duplicate or unreadable file was skipped; remove it from the folder")
        kept = [(t, fold_case(p.text)) for p, t, k in zip(self.readings, truth, self.kept) if k]
        wrong = [(t, r) for t, r in kept if t != r]
        pairs = collections.Counter(f"{a}>{b}" for t, r in wrong if len(t) == len(r)
                                    for a, b in zip(t, r) if a != b)
        row = {"epoch": epoch + 1, "threshold": self.level, "kept": len(kept), "kept_wrong": len(wrong),
               "confusions": pairs.most_common(8)}
        rows.append(row)
        print(f"refresh after epoch {row['epoch']}: {len(kept)} kept, {len(wrong)} of them wrong; "
              + ", ".join(f"{p} {n}" for p, n in row["confusions"][:4]), flush=True)

    PseudoLabels.on_epoch_end = traced


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=100, help="labelled images (default 100)")
    p.add_argument("--minutes", type=float, default=10, help="--time-limit of the run (default 10)")
    common.add_run_options(p)
    args, root, started, work = common.start_run(p, "caocrvfy-trace-")
    from caocrvfy.data.charset import fold_case
    from caocrvfy.data.folders import unlabelled_set
    from caocrvfy.evaluation import evaluate_folder
    from caocrvfy.inference import Predictor
    from caocrvfy.training.config import config_from_args
    from caocrvfy.training.trainer import train

    test_dir, test, rest = test_side(root, work)
    labelled = make_side(root, work / "labelled", rest[:args.count])
    unlabelled = unlabelled_side(root, work / "unlabelled", rest[args.count:])
    labels = dict(rest[args.count:])
    truth = [fold_case(labels[path.relative_to(unlabelled).as_posix()]) for path in unlabelled_set(unlabelled).paths]
    rows: list[dict] = []
    trace_refreshes(truth, rows)
    run_dir = work / "run"
    train(config_from_args(["--data", str(labelled), "--unlabelled", str(unlabelled), "--time-limit",
                            f"{args.minutes:g}", "--out", str(run_dir), *args.train_option]))
    scored = evaluate_folder(Predictor.load(run_dir), test_dir, ignore_case=True)
    print(f"\n{root.name}: {args.count} labels, {len(truth)} unlabelled, {len(rows)} refreshes; "
          f"test full-match {scored['full_match'] * 100:.2f}% of {scored['count']}")
    common.write_result(f"pseudo-label-trace-{common.slug(root.name)}",
                        {"labels": args.count, "unlabelled": len(truth), "train_options": args.train_option,
                         "test_full_match": scored["full_match"], "test_count": scored["count"], "refreshes": rows},
                        args.results_dir, started)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
