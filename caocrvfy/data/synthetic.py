"""Synthetic captchas from the `captcha` library: to disk, into memory, or streamed.

The library draws from `secrets`, so seeding does not make its images reproducible: keep fixed
evaluation sets on disk. Drawing runs in worker processes that skip importing Keras.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from caocrvfy.data.charset import DEFAULT_CHARSET_SPEC, encode_labels, parse_charset
from caocrvfy.data.colour_keys import ColourKey, parse_pair
from caocrvfy.data.expressions import ExpressionSpec
from caocrvfy.data.folders import MANIFEST, read_labels_csv, write_labels_csv
from caocrvfy.data.images import model_input
from caocrvfy.errors import DataError
from caocrvfy.progress import Progress

log = logging.getLogger(__name__)

_GENERATED = re.compile(r"^(?P<label>[^_]+)_(?P<index>\d+)\.png$")


@dataclass(frozen=True)
class CaptchaSpec:
    """What a synthetic captcha looks like."""

    charset: str = parse_charset(DEFAULT_CHARSET_SPEC)
    length: int = 6  # the longest label
    width: int = 160
    height: int = 60
    style: str = "captcha"  # or "varied": caocrvfy.data.varied, drawn at site-like sizes, resized to width x height
    min_length: int | None = None  # None: every label has `length` characters
    arithmetic: str | None = None  # an ExpressionSpec's text ("0-20 +-x =?"): labels are expressions, in labels.csv
    colour_key: str | None = None  # "KEEP,DECOY": caocrvfy.data.colour_captchas, labels the KEEP-coloured characters

    def __post_init__(self):
        if self.colour_key is not None:
            parse_pair(self.colour_key)  # DataError for a malformed pair or two colours too alike
            if self.style != "captcha" or self.arithmetic:
                raise DataError(f"colour key {self.colour_key!r} draws its own two-colour captchas: give it without "
                                f"{'arithmetic' if self.arithmetic else f'style {self.style!r}'}.")

    @property
    def shortest(self) -> int:
        return self.length if self.min_length is None else self.min_length

    @property
    def fixed_length(self) -> bool:
        return self.shortest == self.length


_worker_generator = None
_worker_varied = None
_worker_colour = None


def _init_worker(width: int, height: int, style: str = "captcha", charset: str = "",
                 colour_key: str | None = None, length: int = 1) -> None:
    from captcha.image import ImageCaptcha

    global _worker_generator, _worker_varied, _worker_colour
    _worker_generator = ImageCaptcha(width=width, height=height)
    if style == "varied":
        from caocrvfy.data.varied import VariedDrawer

        _worker_varied = VariedDrawer(charset)
    if colour_key:
        from caocrvfy.data.colour_captchas import ColourCaptchaDrawer

        _worker_colour = ColourCaptchaDrawer(charset, colour_key, length)


def worker_captcha():
    """Inside a `drawing_pool` worker: that process's `captcha.image.ImageCaptcha`, for jobs
    of one's own (benchmarks draw single glyphs with it)."""
    if _worker_generator is None:
        raise RuntimeError("worker_captcha() is only available inside a drawing_pool worker process")
    return _worker_generator


def drawing_pool(workers: int, spec: CaptchaSpec):
    """A process pool that draws captchas; its workers skip importing Keras (see __init__)."""
    os.environ["CAOCRVFY_DRAWING_WORKER"] = "1"
    try:
        return mp.get_context("spawn").Pool(workers, _init_worker, (spec.width, spec.height, spec.style, spec.charset,
                                                                    spec.colour_key, spec.length))
    finally:
        del os.environ["CAOCRVFY_DRAWING_WORKER"]


def _random_labels(spec: CaptchaSpec, count: int) -> list[str]:
    if spec.arithmetic:
        return ExpressionSpec.parse(spec.arithmetic).labels(count)
    if _worker_colour is not None:
        return _worker_colour.labels(spec.shortest, spec.length, count)
    if _worker_varied is not None:
        return _worker_varied.labels(spec.charset, spec.shortest, spec.length, count)
    rng = np.random.default_rng()
    picks = rng.integers(0, len(spec.charset), size=(count, spec.length))
    return ["".join(spec.charset[i] for i in row) for row in picks]


def _drawn(spec: CaptchaSpec, label: str) -> Image.Image:
    """One captcha at the spec's size: the `captcha` library's, a two-colour one, or a varied
    one resized."""
    if _worker_colour is not None:
        return _worker_colour.image(label, (spec.width, spec.height))
    if _worker_varied is None:
        return _worker_generator.generate_image(label)
    return _worker_varied.image(label).resize((spec.width, spec.height), Image.BILINEAR)


def _file_name(spec: CaptchaSpec, label: str, index: int) -> str:
    """LABEL_INDEX.png; INDEX.png for expressions (`/`, `*` and `?` cannot be in a file name),
    whose labels go to labels.csv."""
    return f"{index}.png" if spec.arithmetic else f"{label}_{index}.png"


def _write_chunk(job: tuple[str, CaptchaSpec, int, int]) -> list[tuple[str, str]]:
    out_dir, spec, start, count = job
    written = []
    for index, label in zip(range(start, start + count), _random_labels(spec, count)):
        name = _file_name(spec, label, index)
        _drawn(spec, label).save(os.path.join(out_dir, name))
        written.append((name, label))
    return written


def _array_chunk(job: tuple[CaptchaSpec, int, int, tuple[int, int], ColourKey | None]) -> tuple[np.ndarray, list[str]]:
    """`count` captchas as uint8 arrays of `size` (height, width), masked to the key when one is
    given: as `open_image` reads them (`model_input`)."""
    spec, count, channels, (height, width), keep_colour = job
    labels = _random_labels(spec, count)
    images = np.stack([model_input(_drawn(spec, label), height, width, channels, keep_colour) for label in labels])
    return images, labels


def _chunks(count: int, workers: int) -> list[tuple[int, int]]:
    """(offset, size) pieces of a drawing job: about four per worker, at most 250 captchas each."""
    chunk = max(1, min(250, math.ceil(count / (workers * 4))))
    return [(i, min(chunk, count - i)) for i in range(0, count, chunk)]


COLOUR_DRAWING = 3  # raised when the colour-key drawing changes, so that no cache of older drawings is topped up


def cache_folder(cache_dir: str | Path, spec: CaptchaSpec, split: str) -> Path:
    """Where `caocrvfy train` caches the synthetic captchas of `spec` for `split` (train, val)."""
    key = hashlib.sha1(spec.charset.encode()).hexdigest()[:8]
    kind = "" if spec.style == "captcha" and spec.fixed_length else f"{spec.style}-{spec.shortest}to"
    if spec.arithmetic:
        kind = f"arithmetic-{hashlib.sha1(spec.arithmetic.encode()).hexdigest()[:6]}-{kind}"
    if spec.colour_key:
        kind = f"colour{COLOUR_DRAWING}-{hashlib.sha1(spec.colour_key.encode()).hexdigest()[:6]}-{kind}"
    return Path(cache_dir) / f"synthetic-{kind}{spec.length}x{len(spec.charset)}-{spec.width}x{spec.height}-{key}" / split


_OLD_DEFAULTS = {"style": "captcha", "min_length": None, "arithmetic": None,
                 "colour_key": None}  # manifests written before these existed


def _manifest_fields(spec: CaptchaSpec) -> dict:
    return {"charset": spec.charset, "length": spec.length, "width": spec.width, "height": spec.height,
            "style": spec.style, "min_length": spec.min_length, "arithmetic": spec.arithmetic,
            "colour_key": spec.colour_key}


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
        mine = _manifest_fields(spec)
        if {k: old.get(k, _OLD_DEFAULTS.get(k)) for k in mine} != mine:
            raise DataError(f"{out} holds captchas of another kind ({manifest_path}); choose another folder.")
    if spec.arithmetic:  # INDEX.png, labelled in labels.csv
        rows = read_labels_csv(out / "labels.csv")[0] if (out / "labels.csv").exists() else []
        indices = [int(name[:-4]) for name, _ in rows if re.fullmatch(r"\d+\.png", name)]
    else:
        rows, indices = [], [int(m["index"]) for m in (_GENERATED.match(p.name) for p in out.iterdir()) if m]
    have = len(indices)
    start = max(indices, default=-1) + 1
    need = max(count - have, 0)
    if need:
        workers = workers or os.cpu_count() or 1
        jobs = [(str(out), spec, start + i, n) for i, n in _chunks(need, workers)]
        log.info(f"generating {need} captchas into {out} ({have} there already) with {workers} processes")
        progress = Progress(need, "generate")
        with drawing_pool(workers, spec) as pool:
            for written in pool.imap_unordered(_write_chunk, jobs):
                rows.extend(written)
                progress.update(len(written))
        if spec.arithmetic:
            write_labels_csv(sorted(rows, key=lambda row: (len(row[0]), row[0])), out / "labels.csv")  # 2.png before 10.png
    manifest = {
        **_manifest_fields(spec),
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
                workers: int | None = None, keep_colour: ColourKey | None = None) -> tuple[np.ndarray, list[str]]:
    """`count` captchas drawn straight into uint8 arrays of `size` (height, width), with their
    labels: the same pixels as writing them as PNG files and reading them back (masked to
    `keep_colour` when given), without the PNG encoding (on one core 10.5 ms a captcha written
    against 6.8 ms drawn; benchmarks/drawing.py compares the two ways side by side)."""
    workers = workers or os.cpu_count() or 1
    size = size or (spec.height, spec.width)
    jobs = [(spec, n, channels, size, keep_colour) for _, n in _chunks(count, workers)]
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
                 size: tuple[int, int] | None = None, keep_colour: ColourKey | None = None):
        self.spec, self.channels, self.capacity, self.keep_colour = spec, channels, capacity, keep_colour
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
        job = (self.spec, 64, self.channels, self.size, self.keep_colour)
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

    @property
    def filling(self) -> bool:
        """Whether the thread that keeps the buffer full is still running."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stops the filling thread (within about half a second), then the drawing processes."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.terminate()

