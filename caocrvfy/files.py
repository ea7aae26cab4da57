"""Files written so that a crash or a kill leaves either the old version or the new one, never
half of one: write beside, flush, rename into place, flush the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path


def fsync(path: Path) -> None:
    """Flushes a file's data, or a folder's list of names, to disk."""
    if os.name == "nt" and path.is_dir():  # Windows cannot open a folder; its renames are journalled
        return
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync(path.parent)


def write_json_atomic(data: dict, path: Path) -> None:
    write_text_atomic(json.dumps(data, indent=2, default=float), path)
