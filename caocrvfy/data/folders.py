"""Labelled folders: labels from file names or labels.csv, with what was skipped and why."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from caocrvfy.data.charset import infer_charset
from caocrvfy.data.colour_keys import ColourKey
from caocrvfy.data.images import IMAGE_SUFFIXES, open_image
from caocrvfy.errors import DataError
from caocrvfy.files import write_text_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # written by `caocrvfy generate` beside the captchas it draws
LABELLED_HEIGHT = 64  # the model's input height for a labelled folder; the width follows the images


@dataclass
class LabelledSet:
    """Images and labels read from one folder, with what was skipped and why."""

    root: Path
    paths: list[Path]
    labels: list[str]
    charset: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    manifest: dict | None = None

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))

    def report_skipped(self) -> None:
        if self.skipped:
            log.warning(f"{self.root}: skipped {len(self.skipped)} item(s):")
            for name, reason in self.skipped:
                log.warning(f"  {name}: {reason}")


def _label_from_name(name: str) -> str:
    return re.split(r"[_.]", name, maxsplit=1)[0]


def _outside(name: str) -> bool:
    """Whether a labels.csv name leaves its folder: absolute, or `..` above it. Judged on the
    name alone, so that a folder of symbolic links to images elsewhere still reads."""
    normal = os.path.normpath(name)
    return os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep)


def read_labels_csv(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(file, label) pairs of labels.csv, and (item, reason) for the rows that cannot be used:
    a row without both columns, or a file listed again (the first row wins)."""
    pairs, problems, first_row = [], [], {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read as a UTF-8 CSV file ({exc}); write it as file,label rows.") from exc
    for number, row in enumerate(rows, start=1):
        if not row or (number == 1 and [c.strip().lower() for c in row[:2]] == ["file", "label"]):
            continue
        name = row[0].strip()
        if name and "\0" not in name and not os.path.isabs(name):
            name = os.path.normpath(name)  # ./a.png and sub/../a.png name a.png
        if len(row) < 2 or not name:
            problems.append((name or f"labels.csv row {number}", f"labels.csv row {number} needs two columns, file,label"))
        elif name in first_row:
            problems.append((name, f"listed again in labels.csv row {number} (row {first_row[name]} is used)"))
        else:
            first_row[name] = number
            pairs.append((name, row[1].strip()))
    return pairs, problems


def write_labels_csv(rows: list[tuple], path: Path) -> None:
    """Writes (file, label) or (file, label, confidence) rows as a labels.csv, in the order
    given, atomically: a kill leaves the old file or the new one, whole."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label", "confidence"] if any(len(row) > 2 for row in rows) else ["file", "label"])
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(buffer.getvalue(), path)


def read_folder(
    root: str | Path,
    charset: str | None = None,
    length: int | None = None,
    ignore_case: bool = False,
) -> LabelledSet:
    """Lists a folder of labelled images; labels from `labels.csv` or from file names.

    Items whose label is empty, uses characters outside `charset`, or has the wrong `length`
    are skipped with their reason; images are decoded later by `load_images`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder of labelled images.")
    manifest = json.loads((root / MANIFEST).read_text()) if (root / MANIFEST).exists() else None
    csv_path = root / "labels.csv"
    pairs: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []
    if csv_path.exists():
        pairs, problems = read_labels_csv(csv_path)
    else:
        names = sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        pairs = [(name, _label_from_name(name)) for name in names]
    if ignore_case:
        pairs = [(name, label.lower()) for name, label in pairs]
    if charset is None and manifest and not ignore_case:
        charset = manifest["charset"]
    out = LabelledSet(root, [], [], charset or "", manifest=manifest)
    for name, reason in problems:
        out.skip(name, reason)
    for name, label in pairs:
        if "\0" in name:
            out.skip(repr(name), "not a file name (it holds a NUL character)")
        elif _outside(name):
            out.skip(name, "refused: labels.csv may only name files inside the folder (no absolute or ../ paths)")
        elif not label:
            out.skip(name, "empty label")
        elif charset and set(label) - set(charset):
            bad = "".join(sorted(set(label) - set(charset)))
            out.skip(name, f"label '{label}' has characters outside the character set: {bad!r}")
        elif length and len(label) != length:
            out.skip(name, f"label '{label}' has {len(label)} characters, the model reads {length}")
        elif not (root / name).is_file():
            out.skip(name, "listed in labels.csv but the file is missing")
        else:
            out.paths.append(root / name)
            out.labels.append(label)
    if not charset:
        out.charset = infer_charset(out.labels)
    if not out.paths:
        out.report_skipped()
        raise DataError(
            f"{root} has no usable labelled images: name files LABEL_anything.png or add a "
            "labels.csv with file,label rows."
        )
    return out


def load_images(
    data: LabelledSet, height: int, width: int, channels: int, dedupe: bool = True,
    keep_colour: ColourKey | None = None,
) -> tuple[np.ndarray, list[str], list[Path]]:
    """Decodes the set's images, masked to `keep_colour` when given (`open_image`); unreadable
    files and exact duplicates (the same file bytes) are skipped and listed."""

    def one(path: Path):
        try:
            raw = path.read_bytes()
            return hashlib.md5(raw).hexdigest(), open_image(raw, height, width, channels, keep_colour=keep_colour), None
        except Exception as exc:  # Pillow raises many types for broken files
            return None, None, f"cannot be read as an image ({type(exc).__name__}: {exc}); replace or remove it"

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as ex:
        results = list(ex.map(one, data.paths))
    seen: dict[str, str] = {}
    images, labels, paths = [], [], []
    for path, label, (digest, image, error) in zip(data.paths, data.labels, results):
        if error:
            data.skip(path.name, error)
        elif dedupe and digest in seen:
            data.skip(path.name, f"duplicate of {seen[digest]}")
        else:
            seen[digest] = path.name
            images.append(image)
            labels.append(label)
            paths.append(path)
    if not images:
        data.report_skipped()
        raise DataError(f"{data.root} has no readable images: check the files listed above.")
    return np.stack(images), labels, paths


def unlabelled_set(root: str | Path, exclude: list[Path] = ()) -> LabelledSet:
    """The image files of a folder, labels empty, without `exclude` (the labelled images, when
    the two folders are one); files that are not images are listed as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder of unlabelled images.")
    known = {p.resolve() for p in exclude}
    out = LabelledSet(root, [], [], "")
    for path in sorted(root.iterdir()):
        if path.name in ("labels.csv", MANIFEST) or path.is_dir() or path.resolve() in known:
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            out.skip(path.name, "not an image file (by its suffix)")
            continue
        out.paths.append(path)
        out.labels.append("")
    if not out.paths:
        out.report_skipped()
        raise DataError(f"{root} has no image files besides the labelled ones: give a folder of unlabelled captchas.")
    return out


def is_validation(name: str, fraction: float) -> bool:
    """Deterministic split by file name: the same file always lands on the same side."""
    return zlib.crc32(name.encode("utf-8")) % 10_000 < fraction * 10_000


def choose_input_size(paths: list[Path], height: int = LABELLED_HEIGHT) -> tuple[int, int]:
    """A fixed height and a width (multiple of 8) from the median aspect ratio of the images."""
    ratios = []
    for path in paths[:500]:
        try:
            with Image.open(path) as im:
                ratios.append(im.width / im.height)
        except Exception:
            continue
    ratio = float(np.median(ratios)) if ratios else 2.5
    return height, max(32, int(round(height * ratio / 8)) * 8)
