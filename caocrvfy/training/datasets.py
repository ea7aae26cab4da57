"""The data of one training run: a labelled folder, or synthetic captchas cached, drawn into
memory or streamed, as uint8 images and 1-based padded labels."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caocrvfy import locations
from caocrvfy.data import folders, synthetic
from caocrvfy.data.charset import DEFAULT_CHARSET_SPEC, encode_labels, parse_charset
from caocrvfy.data.colour_keys import optional_key
from caocrvfy.errors import DataError
from caocrvfy.model_config import ModelConfig
from caocrvfy.training.config import ALPHABET_FROM_INIT_BELOW, STREAM_MIN_CAPACITY, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Arrays as (uint8 images, 1-based padded indices); `stream` instead of `train` when
    captchas are drawn during training."""

    train: tuple[np.ndarray, np.ndarray] | None
    val: tuple[np.ndarray, np.ndarray]
    charset: str
    max_length: int
    fixed_length: bool
    height: int
    width: int
    train_images: int
    stream: synthetic.SyntheticStream | None = None
    unlabelled: np.ndarray | None = None  # uint8 images for --unlabelled
    merge_case: bool = False  # see `merges_case`


def stream_workers() -> int:
    """Drawing processes for --synthetic stream: every core but two (the trainer and its feeder)."""
    return max(1, (os.cpu_count() or 1) - 2)


def load_data(cfg: TrainConfig, channels: int, saved: ModelConfig | None = None,
              init_charset: str | None = None) -> TrainingData:
    """Reads or draws the run's data; `saved` (a resumed run's model) fixes the input size,
    character set and length; `init_charset`: the character set of the --init model, which a
    small labelled set's character set is widened with (`site_alphabet`). With --keep-colour
    every image is masked to that colour as it is read or drawn; the cached files stay as drawn."""
    if cfg.data:
        return _labelled(cfg, channels, saved, init_charset)
    spec = synthetic.CaptchaSpec(parse_charset(cfg.charset or DEFAULT_CHARSET_SPEC), cfg.length, cfg.width, cfg.height,
                                 cfg.style, cfg.min_length, colour_key=cfg.colour_key)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else locations.cache_dir()
    keep = optional_key(cfg.keep_colour)

    def drawn(split: str, count: int):
        if cfg.synthetic != "cache":
            images, labels = synthetic.draw_arrays(count, spec, channels, keep_colour=keep)
            return images, encode_labels(labels, spec.charset, spec.length)
        folder = synthetic.generate(synthetic.cache_folder(cache_dir, spec, split), count, spec)
        found = folders.read_folder(folder, charset=spec.charset, length=spec.length if spec.fixed_length else None)
        chosen = folders.LabelledSet(found.root, found.paths[:count], found.labels[:count], spec.charset)
        images, labels, _ = folders.load_images(chosen, spec.height, spec.width, channels, dedupe=False,
                                                keep_colour=keep)
        return images, encode_labels(labels, spec.charset, spec.length)

    val = drawn("val", cfg.val_size)
    stream = train = None
    if cfg.synthetic == "stream":
        stream = synthetic.SyntheticStream(spec, channels, max(cfg.train_size, STREAM_MIN_CAPACITY), stream_workers(),
                                           initial=cfg.train_size, keep_colour=keep)
    else:
        train = drawn("train", cfg.train_size)
    return TrainingData(train, val, spec.charset, spec.length, spec.fixed_length, spec.height, spec.width,
                        cfg.train_size, stream)


def site_alphabet(labels: list[str], init_charset: str) -> str:
    """The labels' characters plus the init model's letters and digits in the labels' case:
    digits when the labels hold digits, lower-case letters when they hold lower-case ones,
    upper-case likewise. Symbols come only from the labels."""
    seen = set("".join(labels))
    kinds = {kind for kind, test in (("digit", str.isdigit), ("lower", str.islower), ("upper", str.isupper))
             if any(test(c) for c in seen)}

    def kind(c: str) -> str | None:
        return "digit" if c.isdigit() else "lower" if c.islower() else "upper" if c.isupper() else None

    return "".join(sorted(seen | {c for c in init_charset if c.isalnum() and kind(c) in kinds}))


def merges_case(labels: list[str], init_charset: str | None) -> bool:
    """Whether the model reads each letter in both cases and adds the two (ModelConfig.merge_case):
    when the labels' letters are all of one case (a site whose labels are case-folded, or
    that draws one case) and the --init model tells some of them apart from the other case.
    Its units for the other case then keep reading the glyphs drawn that way."""
    letters = {c for c in "".join(labels) if c.isalpha()}
    one_case = all(c.islower() for c in letters) or all(c.isupper() for c in letters)
    return bool(init_charset and letters and one_case
                and any(c in init_charset and c.swapcase() in init_charset for c in letters))


def _labelled(cfg: TrainConfig, channels: int, saved: ModelConfig | None,
              init_charset: str | None = None) -> TrainingData:
    charset = parse_charset(cfg.charset) if cfg.charset else None
    found = folders.read_folder(cfg.data, charset=charset, ignore_case=cfg.ignore_case)
    if saved is not None:
        height, width = saved.height, saved.width
    elif found.manifest:
        height, width = found.manifest["height"], found.manifest["width"]
    else:
        height, width = folders.choose_input_size(found.paths, cfg.height if "height" in cfg.given
                                                  else folders.LABELLED_HEIGHT)
    if saved is None:  # a size named on the command line wins over the manifest's; each image is resized to it
        height = cfg.height if "height" in cfg.given else height
        width = cfg.width if "width" in cfg.given else width
    keep = optional_key(cfg.keep_colour)
    images, labels, paths = folders.load_images(found, height, width, channels, keep_colour=keep)
    found.report_skipped()
    charset = saved.charset if saved is not None else found.charset
    if saved is None and init_charset and not cfg.charset and len(labels) < ALPHABET_FROM_INIT_BELOW:
        widened = site_alphabet(labels, init_charset)
        if widened != charset:
            log.info(f"{len(labels)} labelled images may miss characters the site uses: character set "
                     f"{charset!r} widened with the --init model's to {widened!r} (--charset sets it)")
            charset = widened
    merge = saved is None and not cfg.charset and merges_case(labels, init_charset)
    if merge:
        log.info("labels in one case, the start model (--init) tells the cases apart: each letter is read in "
                 "both cases and the two added (--charset turns this off)")
    max_length = saved.max_length if saved is not None else max(len(s) for s in labels)
    fixed = len({len(s) for s in labels}) == 1
    val = np.array([folders.is_validation(p.name, cfg.val_fraction) for p in paths])
    if val.all() or not val.any():  # tiny folders: keep at least one image on each side
        if len(paths) < 2:
            raise DataError(f"{cfg.data} has {len(paths)} usable labelled image(s): training needs at least 2, "
                            "one to learn from and one to validate on; add labelled images.")
        val = np.zeros(len(paths), bool)
        val[:: max(2, int(round(1 / max(cfg.val_fraction, 1e-3))))] = True
    y = encode_labels(labels, charset, max_length)
    unlabelled = None
    if cfg.unlabelled:
        # Every labelled file is left out, validation ones too: they must stay unseen.
        others = folders.unlabelled_set(cfg.unlabelled, exclude=found.paths + [found.root / n for n, _ in found.skipped])
        unlabelled, _, _ = folders.load_images(others, height, width, channels, keep_colour=keep)
        others.report_skipped()
        log.info(f"{cfg.unlabelled}: {len(unlabelled)} unlabelled images, {len(others.skipped)} skipped")
    log.info(f"{cfg.data}: {len(paths)} images ({(~val).sum()} train, {val.sum()} validation), "
             f"{len(found.skipped)} skipped, lengths {sorted({len(s) for s in labels})}, character set {charset!r}"
             f"{f', only the {keep} pixels kept' if keep else ''}")
    return TrainingData((images[~val], y[~val]), (images[val], y[val]), charset, max_length, fixed, height, width,
                        int((~val).sum()), unlabelled=unlabelled, merge_case=merge)
