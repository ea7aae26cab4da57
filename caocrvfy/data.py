"""Training data: captchas made with the `captcha` library, labelled folders, and input pipelines.

Images are decoded and resized once with Pillow into uint8 arrays; scaling to [0, 1] happens
inside the model so that training, prediction, export and serving share one preprocessing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from caocrvfy.charset import encode_labels, infer_charset, parse_charset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
MANIFEST = "manifest.json"
_GENERATED = re.compile(r"^(?P<label>[^_]+)_(?P<index>\d+)\.png$")


class DataError(ValueError):
    """A problem with the user's data that they can fix; the message says how."""


class Progress:
    """Logs `done/total`, rate and time left at most every `every` seconds."""

    def __init__(self, total: int, what: str, every: float = 2.0):
        self.total, self.what, self.every = total, what, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            log.info(f"{self.what}: {self.done}/{self.total} ({rate:.0f}/s, {left:.0f}s left)")


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class CaptchaSpec:
    """What a synthetic captcha looks like."""

    charset: str = parse_charset("0-9a-zA-Z")
    length: int = 6
    width: int = 160
    height: int = 60


_worker_generator = None


def _init_worker(width: int, height: int) -> None:
    from captcha.image import ImageCaptcha

    global _worker_generator
    _worker_generator = ImageCaptcha(width=width, height=height)


def drawing_pool(workers: int, spec: CaptchaSpec):
    """A process pool that draws captchas; its workers skip importing Keras (see __init__)."""
    os.environ["CAOCRVFY_DRAWING_WORKER"] = "1"
    try:
        return mp.get_context("spawn").Pool(workers, _init_worker, (spec.width, spec.height))
    finally:
        del os.environ["CAOCRVFY_DRAWING_WORKER"]


def _random_labels(charset: str, length: int, count: int) -> list[str]:
    rng = np.random.default_rng()
    picks = rng.integers(0, len(charset), size=(count, length))
    return ["".join(charset[i] for i in row) for row in picks]


def _write_chunk(job: tuple[str, CaptchaSpec, int, int]) -> int:
    out_dir, spec, start, count = job
    for index, label in zip(range(start, start + count), _random_labels(spec.charset, spec.length, count)):
        _worker_generator.write(label, os.path.join(out_dir, f"{label}_{index}.png"))
    return count


def _array_chunk(job: tuple[CaptchaSpec, int, int, tuple[int, int]]) -> tuple[np.ndarray, list[str]]:
    """`count` captchas as uint8 arrays of `size` (height, width): resized as `open_image` does."""
    spec, count, channels, (height, width) = job
    labels = _random_labels(spec.charset, spec.length, count)
    mode = "L" if channels == 1 else "RGB"
    drawn = (_worker_generator.generate_image(label).convert(mode) for label in labels)
    if (height, width) != (spec.height, spec.width):
        drawn = (im.resize((width, height), Image.BILINEAR) for im in drawn)
    images = np.stack([np.asarray(im) for im in drawn]).reshape(count, height, width, channels)
    return images, labels


def _chunks(count: int, workers: int) -> list[tuple[int, int]]:
    """(offset, size) pieces of a drawing job: about four per worker, at most 250 captchas each."""
    chunk = max(1, min(250, math.ceil(count / (workers * 4))))
    return [(i, min(chunk, count - i)) for i in range(0, count, chunk)]


def _captcha_version() -> str:
    from importlib.metadata import version

    return version("captcha")


def generate(
    out_dir: str | Path,
    count: int,
    spec: CaptchaSpec = CaptchaSpec(),
    workers: int | None = None,
) -> Path:
    """Writes `count` captchas as `LABEL_INDEX.png` with a manifest; tops up an existing folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        mine = {"charset": spec.charset, "length": spec.length, "width": spec.width, "height": spec.height}
        if {k: old.get(k) for k in mine} != mine:
            raise DataError(f"{out} holds captchas of another kind ({manifest_path}); choose another folder.")
    existing = [m for m in (_GENERATED.match(p.name) for p in out.iterdir()) if m]
    have = len(existing)
    start = max((int(m["index"]) for m in existing), default=-1) + 1
    need = max(count - have, 0)
    if need:
        workers = workers or os.cpu_count() or 1
        jobs = [(str(out), spec, start + i, n) for i, n in _chunks(need, workers)]
        log.info(f"generating {need} captchas into {out} ({have} there already) with {workers} processes")
        progress = Progress(need, "generate")
        with drawing_pool(workers, spec) as pool:
            for n in pool.imap_unordered(_write_chunk, jobs):
                progress.update(n)
    manifest = {
        "charset": spec.charset,
        "length": spec.length,
        "width": spec.width,
        "height": spec.height,
        "count": have + need,
        "captcha_version": _captcha_version(),
    }
    text = json.dumps(manifest, indent=2)
    if not manifest_path.exists() or manifest_path.read_text() != text:
        # Each process its own temporary name: two trainings may share one cache folder.
        tmp = manifest_path.with_name(f".{manifest_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(text)
        tmp.replace(manifest_path)
    return out


def draw_arrays(count: int, spec: CaptchaSpec, channels: int = 1, size: tuple[int, int] | None = None,
                workers: int | None = None) -> tuple[np.ndarray, list[str]]:
    """`count` captchas drawn straight into uint8 arrays of `size` (height, width), with their
    labels: the same pixels as writing them as PNG files and reading them back, without the PNG
    encoding (on one core 10.5 ms a captcha written against 6.8 ms drawn; benchmarks/drawing.py
    compares the two ways side by side)."""
    workers = workers or os.cpu_count() or 1
    size = size or (spec.height, spec.width)
    jobs = [(spec, n, channels, size) for _, n in _chunks(count, workers)]
    log.info(f"drawing {count} captchas into memory with {workers} processes")
    progress = Progress(count, "draw")
    images, labels = [], []
    with drawing_pool(workers, spec) as pool:
        for part, part_labels in pool.imap(_array_chunk, jobs):
            images.append(part)
            labels.extend(part_labels)
            progress.update(len(part_labels))
    return np.concatenate(images), labels


class SyntheticStream:
    """A ring buffer of fresh captchas that worker processes keep refilling during training.

    Training samples batches from whatever is in the buffer, so with enough workers each
    image is seen only a few times; with few workers the buffer still turns over slowly.
    """

    def __init__(self, spec: CaptchaSpec, channels: int, capacity: int, workers: int, initial: int,
                 size: tuple[int, int] | None = None):
        self.spec, self.channels, self.capacity = spec, channels, capacity
        self.size = size or (spec.height, spec.width)  # (height, width) kept: the model's input
        self.images = np.zeros((capacity, *self.size, channels), np.uint8)
        self.labels = np.zeros((capacity, spec.length), np.int32)
        self.filled = 0
        self.written = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None  # what stopped the filling thread, raised to the trainer
        self._initial = min(initial, capacity)
        self._workers = workers
        self._pool = drawing_pool(workers, spec)
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            self._fill_until_stopped()
        except BaseException as exc:  # a drawing process failed: tell the trainer instead of hanging it
            self._error = exc
            self._ready.set()

    def _fill_until_stopped(self) -> None:
        progress = Progress(self._initial, "first captchas")
        job = (self.spec, 64, self.channels, self.size)
        while not self._stop.is_set():
            # Bounded rounds: an endless job iterator would be drained into the task queue at once.
            chunks = self._pool.imap_unordered(_array_chunk, [job] * (2 * self._workers))
            for _ in range(2 * self._workers):
                while True:  # wake up now and then, so that close() is never left waiting
                    if self._stop.is_set():
                        return
                    try:
                        images, labels = chunks.next(timeout=0.5)
                        break
                    except mp.TimeoutError:
                        continue
                self._store(images, labels)
                if not self._ready.is_set():
                    progress.update(len(labels))
                    if self.filled >= self._initial:
                        self._ready.set()

    def _store(self, images: np.ndarray, labels: list[str]) -> None:
        encoded = encode_labels(labels, self.spec.charset, self.spec.length)
        with self._lock:
            at = np.arange(self.written, self.written + len(labels)) % self.capacity
            self.images[at] = images
            self.labels[at] = encoded
            self.written += len(labels)
            self.filled = min(self.capacity, self.filled + len(labels))

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"drawing captchas failed: {self._error!r}") from self._error

    def wait_ready(self) -> None:
        self._ready.wait()
        self._raise_error()

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        self._raise_error()
        with self._lock:
            idx = rng.integers(0, self.filled, size=n)
            return self.images[idx], self.labels[idx]

    def close(self) -> None:
        """Stops the filling thread (within about half a second), then the drawing processes."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.terminate()


# ---------------------------------------------------------------- labelled folders


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
    if csv_path.exists():
        with csv_path.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if len(row) >= 2 and row[0] != "file":
                    pairs.append((row[0].strip(), row[1].strip()))
    else:
        names = sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        pairs = [(name, _label_from_name(name)) for name in names]
    if ignore_case:
        pairs = [(name, label.lower()) for name, label in pairs]
    if charset is None and manifest and not ignore_case:
        charset = manifest["charset"]
    out = LabelledSet(root, [], [], charset or "", manifest=manifest)
    for name, label in pairs:
        if not label:
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


def open_image(source: str | Path | bytes, height: int, width: int, channels: int) -> np.ndarray:
    """Decodes any Pillow-readable image (first frame) to uint8 (height, width, channels)."""
    import io

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fh) as im:
        im.seek(0)
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im.alpha_composite(rgba)
        im = im.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).reshape(height, width, channels)


def load_images(
    data: LabelledSet, height: int, width: int, channels: int, dedupe: bool = True
) -> tuple[np.ndarray, list[str], list[Path]]:
    """Decodes the set's images; unreadable files and exact duplicates are skipped and listed."""

    def one(path: Path):
        try:
            raw = path.read_bytes()
            return hashlib.md5(raw).hexdigest(), open_image(raw, height, width, channels), None
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


def is_validation(name: str, fraction: float) -> bool:
    """Deterministic split by file name: the same file always lands on the same side."""
    return zlib.crc32(name.encode("utf-8")) % 10_000 < fraction * 10_000


def choose_input_size(paths: list[Path], height: int = 64) -> tuple[int, int]:
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
