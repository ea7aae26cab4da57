"""Reading a labelled folder with a Predictor: the records the scores and the report are made of."""

from __future__ import annotations

from pathlib import Path

from caocrvfy.data.charset import fold_case
from caocrvfy.data.folders import read_folder
from caocrvfy.errors import DataError
from caocrvfy.evaluation.scores import char_accuracy, full_match, surest_wrong
from caocrvfy.inference.decoding import Constraint
from caocrvfy.inference.predictor import PREDICT_BATCH, Predictor
from caocrvfy.progress import Progress


def read_labelled_folder(predictor: Predictor, folder: str | Path, ignore_case: bool = False,
                         batch_size: int = PREDICT_BATCH, progress: bool = False,
                         constraint: Constraint | None = None):
    """Reads a labelled folder (labels as `read_folder`): (truth, prediction, confidence) records,
    their image paths, and the skipped items with reasons. Case-folded when asked or when the
    model was trained with --ignore-case. `constraint` holds the readings to a length and an
    alphabet (`Constraint`)."""
    # Labels the model cannot read (characters outside its set, another length for a
    # fixed-length model) are skipped and listed, not scored; compared case-folded, the set is too.
    folded = ignore_case or predictor.ignore_case
    charset = "".join(sorted(set(fold_case(predictor.charset)))) if folded else predictor.charset
    found = read_folder(folder, charset=charset, length=predictor.length, ignore_case=folded)
    fold = fold_case if folded else (lambda s: s)
    label_of = dict(zip(found.paths, found.labels))
    records, paths, skipped = [], [], list(found.skipped)
    counter = Progress(len(found.paths), "read") if progress else None
    for path, prediction, error in predictor.predict_files(found.paths, batch_size=batch_size, constraint=constraint):
        if counter:
            counter.update(1)
        if error:
            skipped.append((path.name, error))
            continue
        records.append((fold(label_of[path]), fold(prediction.text), prediction.confidence))
        paths.append(path)
    if not records:
        raise DataError(f"{folder} has no readable labelled images to evaluate.")
    return records, paths, skipped


def evaluate_folder(predictor: Predictor, folder: str | Path, ignore_case: bool = False,
                    constraint: Constraint | None = None) -> dict:
    """Full-match and per-character accuracy on a labelled folder (labels as `read_folder`), with
    the skipped items and the wrong readings (file, label, reading, confidence; surest first)."""
    records, paths, skipped = read_labelled_folder(predictor, folder, ignore_case, constraint=constraint)
    wrong = [{"file": paths[i].name, "label": records[i][0], "read": records[i][1],
              "confidence": round(float(records[i][2]), 4)} for i in surest_wrong(records, count=len(records))]
    return {"full_match": full_match(records), "char_accuracy": char_accuracy(records), "count": len(records),
            "skipped": [{"file": n, "reason": r} for n, r in skipped], "wrong": wrong}
