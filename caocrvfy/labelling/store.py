"""A folder being labelled: its images, its labels.csv, the images marked unreadable, and a log
of each answer beside the reading the model suggested.

Every answer is written at once, atomically: labels.csv (the format `train --data` reads) and
`.caocrvfy/unreadable.txt` are rewritten whole under a temporary name and renamed into place,
so a kill leaves the old file or the new one. One lock serialises the writes of all requests,
so two tabs on one folder lose nothing. The answers log (`.caocrvfy/answers.csv`) is appended
to; it feeds the accuracy-against-labels figure.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from caocrvfy.data.folders import MANIFEST, read_labels_csv, write_labels_csv
from caocrvfy.data.images import IMAGE_SUFFIXES
from caocrvfy.errors import DataError
from caocrvfy.files import write_text_atomic

log = logging.getLogger(__name__)

STATE_DIR = ".caocrvfy"  # inside the folder: unreadable.txt, answers.csv and the page's training runs
LABELS, UNREADABLE, ANSWERS = "labels.csv", "unreadable.txt", "answers.csv"
MAX_LABEL_CHARS = 32
ANSWER_FIELDS = ("time", "file", "label", "suggestion", "confidence", "model")


class LabelError(ValueError):
    """A label or file name the person can fix; the page shows the sentence."""


@dataclass
class Change:
    """What one answer replaced, so that undo can put it back."""

    file: str
    label: str | None
    unreadable: bool


def check_label(text: str, charset: str | None = None) -> str:
    """The label without surrounding spaces, or LabelError saying what is wrong with it."""
    label = text.strip()
    if not label:
        raise LabelError("the label is empty: type the characters you see, or mark the image unreadable.")
    if len(label) > MAX_LABEL_CHARS:
        raise LabelError(f"the label has {len(label)} characters, more than {MAX_LABEL_CHARS}: is it one captcha?")
    odd = sorted({c for c in label if c.isspace() or unicodedata.category(c)[0] in "CZ"})
    if odd:
        raise LabelError(f"the label holds spaces or control characters ({''.join(map(repr, odd))}): type only the "
                         "captcha's characters.")
    if charset and set(label) - set(charset):
        outside = "".join(sorted(set(label) - set(charset)))
        raise LabelError(f"'{label}' has characters outside the character set {charset!r}: {outside!r}.")
    return label


class LabelStore:
    """The labelling state of one folder; safe to use from several threads."""

    def __init__(self, root: str | Path, charset: str | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise DataError(f"{root} is not a folder: give the folder of captcha images to label.")
        self.charset = charset
        self.state_dir = self.root / STATE_DIR
        self.lock = threading.Lock()
        self.images: dict[str, Path] = {}
        self.skipped: list[tuple[str, str]] = []
        for path in sorted(self.root.iterdir()):
            if path.is_dir() or path.name in (LABELS, MANIFEST) or path.name.endswith(".partial"):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                self.images[path.name] = path
            else:
                self.skipped.append((path.name, "not an image file (by its suffix)"))
        if not self.images:
            raise DataError(f"{self.root} has no image files (.png, .jpg, ...): give the folder of captchas to label.")
        self.labels: dict[str, str] = {}  # every row of labels.csv, in its order, files elsewhere included
        if (self.root / LABELS).exists():
            pairs, problems = read_labels_csv(self.root / LABELS)
            self.labels = dict(pairs)
            for name, reason in problems:
                log.warning(f"{self.root / LABELS}: {name}: {reason}")
        path = self.state_dir / UNREADABLE
        self.unreadable: set[str] = set(path.read_text(encoding="utf-8").split("\n")) - {""} if path.exists() else set()
        self.undo_stack: list[Change] = []
        self.session_saves: list[float] = []  # when each answer of this session was given

    # -- reading ---------------------------------------------------------------------------------
    def path_of(self, name: str) -> Path | None:
        """The image's path when `name` is one of the folder's images, else None (never a path
        built from the name: nothing outside the listed files can be reached)."""
        return self.images.get(name)

    def unlabelled(self) -> list[str]:
        with self.lock:
            return [n for n in self.images if n not in self.labels and n not in self.unreadable]

    def labelled(self) -> dict[str, str]:
        with self.lock:
            return {n: label for n, label in self.labels.items() if n in self.images}

    def progress(self) -> dict:
        with self.lock:
            labelled = sum(n in self.images for n in self.labels)
            unreadable = len(self.unreadable & set(self.images) - set(self.labels))
            saves = self.session_saves
            minutes = (time.time() - saves[0]) / 60 if saves else 0.0
            rate = len(saves) / minutes if len(saves) >= 2 and minutes > 0 else None
            return {"labelled": labelled, "unreadable": unreadable, "left": len(self.images) - labelled - unreadable,
                    "total": len(self.images), "per_minute": rate}

    def curve(self, bucket: int = 10) -> list[dict]:
        """Accuracy of the suggestions against the number of labels: for each run of `bucket`
        labelled images, in the order they were first answered, the share whose suggestion (made
        before the person labelled it, so by a model that had not seen the label) equals the label
        now in labels.csv."""
        first: dict[str, dict] = {}
        for row in self._answers():
            first.setdefault(row["file"], row)
        with self.lock:
            scored = [(row["suggestion"] == self.labels[name], row["model"]) for name, row in first.items()
                      if name in self.labels and row.get("suggestion")]
        points = []
        for start in range(0, len(scored), bucket):
            chunk = scored[start : start + bucket]
            points.append({"labels": start + len(chunk), "accuracy": sum(ok for ok, _ in chunk) / len(chunk),
                           "count": len(chunk), "model": chunk[-1][1]})
        return points

    def _answers(self) -> list[dict]:
        path = self.state_dir / ANSWERS
        if not path.exists():
            return []
        with path.open(newline="", encoding="utf-8") as fh:
            return [row for row in csv.DictReader(fh) if row.get("file")]

    # -- answering -------------------------------------------------------------------------------
    def _known(self, name: str) -> None:
        if name not in self.images:
            raise LabelError(f"{name!r} is not an image of {self.root}.")

    def save(self, name: str, text: str, suggestion: str | None = None, confidence: float | None = None,
             model: str | None = None) -> str:
        """Labels `name`; returns the label as stored."""
        self._known(name)
        label = check_label(text, self.charset)
        with self.lock:
            self.undo_stack.append(Change(name, self.labels.get(name), name in self.unreadable))
            self.labels[name] = label
            self.session_saves.append(time.time())
            self._write_labels()
            if name in self.unreadable:
                self.unreadable.discard(name)
                self._write_unreadable()
            self._log(name, label, suggestion, confidence, model)
        return label

    def mark_unreadable(self, name: str) -> None:
        self._known(name)
        with self.lock:
            self.undo_stack.append(Change(name, self.labels.get(name), name in self.unreadable))
            self.unreadable.add(name)
            self.session_saves.append(time.time())
            self._write_unreadable()
            if self.labels.pop(name, None) is not None:
                self._write_labels()

    def undo(self) -> Change | None:
        """Puts back what the last answer of this session replaced; returns that answer's file
        with what it holds now, or None when there is nothing to undo."""
        with self.lock:
            if not self.undo_stack:
                return None
            change = self.undo_stack.pop()
            if change.label is None:
                self.labels.pop(change.file, None)
            else:
                self.labels[change.file] = change.label
            (self.unreadable.add if change.unreadable else self.unreadable.discard)(change.file)
            if self.session_saves:
                self.session_saves.pop()
            self._write_labels()
            self._write_unreadable()
            return change

    # -- writing (the lock is held) --------------------------------------------------------------
    def _write_labels(self) -> None:
        write_labels_csv(list(self.labels.items()), self.root / LABELS)

    def _write_unreadable(self) -> None:
        self.state_dir.mkdir(exist_ok=True)
        write_text_atomic("".join(f"{name}\n" for name in sorted(self.unreadable)), self.state_dir / UNREADABLE)

    def _log(self, name: str, label: str, suggestion: str | None, confidence: float | None, model: str | None) -> None:
        self.state_dir.mkdir(exist_ok=True)
        path = self.state_dir / ANSWERS
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            if new:
                writer.writerow(ANSWER_FIELDS)
            writer.writerow([f"{time.time():.3f}", name, label, suggestion or "",
                             "" if confidence is None else f"{confidence:.4f}", model or ""])
