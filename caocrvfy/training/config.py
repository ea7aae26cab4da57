"""Training settings: `TrainConfig` (what the user asks for), its command line, and `RunPlan`
(what a run resolves from it, the data and the device, once, before training starts).

The model's defaults come from `ModelConfig`; nothing here repeats them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from caocrvfy import focal_loss
from caocrvfy.data.charset import DEFAULT_CHARSET_SPEC
from caocrvfy.data.colour_keys import NAMED_HUES, optional_key, parse_pair
from caocrvfy.data.folders import LABELLED_HEIGHT
from caocrvfy.data.varied import STYLES
from caocrvfy.errors import DataError
from caocrvfy.model_config import ARCHITECTURE, COLUMN_STRIDES, HEADS, ModelConfig, read_config
from caocrvfy.training import batch_stats, distillation
from caocrvfy.training.compile import DEFAULT_LEARNING_RATE

_MODEL = ModelConfig()

SYNTHETIC_SOURCES = ("cache", "memory", "stream")
AUGMENT_BELOW = 5_000  # labelled training images; below this augmentation is on unless switched off
# Labelled images below which the character set also takes the --init model's letters and digits
# in the labels' case: a few labels may miss characters the site uses (25 labels of one site missed 2 of 24).
ALPHABET_FROM_INIT_BELOW = 500
# Validation images below which the last epoch is kept rather than the best: 2 to 10 images cannot
# tell epochs apart (25 labels of swust-cas-2019: epochs picked by 2 images read 96.6% and 98.1% of
# the test files, epochs 20-100 of a run 98.9-99.2%; see docs/notes/2026-12-03-case-merge.md).
SELECT_EPOCH_FROM = 20
SMALL_SET_BELOW, SMALL_BATCH, BATCH = 2_000, 16, 64  # labelled images; batch size below and above
GPU_STEPS_PER_EXECUTION = 8  # 1.59x the stream-fed rate on an H100 (BENCHMARKS.md)
PLATEAU_FACTOR = 0.5  # ReduceLROnPlateau's cut
MIN_LEARNING_RATE = 1e-6  # floor of the plateau cuts and of the cosine decay
DEFAULT_EPOCHS = 150  # without --epochs and --time-limit
TIME_BOUND_EPOCHS = 1_000_000  # fit's epochs when the time limit ends the run (`epoch_limit`)
RAMP_SHARE = 0.3  # of the budget over which --unlabelled readings grow from none to their full share of a batch
STREAM_MIN_CAPACITY = 200_000  # images the --synthetic stream ring buffer holds at least


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting a user can give; saved as the "training" section of config.json."""

    # data
    data: str | None = None
    unlabelled: str | None = None
    labelled_first: float = 0.0  # share of the budget on the labelled images alone (pseudo_labels.PseudoLabels)
    charset: str | None = None
    length: int = _MODEL.max_length
    min_length: int | None = None  # None: synthetic labels all have --length characters
    style: str = "captcha"
    width: int = _MODEL.width  # synthetic captchas are drawn at the model's input size
    height: int = _MODEL.height
    channels: int = _MODEL.channels
    train_size: int = 20_000
    val_size: int = 2_000
    val_fraction: float = 0.1
    ignore_case: bool = False
    synthetic: str = "cache"
    cache_dir: str | None = None  # None: caocrvfy.locations.cache_dir()
    keep_colour: str | None = None  # a ColourKey's text: every image is masked to it; the model reads with it
    colour_key: str | None = None  # "KEEP,DECOY": two-colour synthetic captchas (caocrvfy.data.colour_captchas)
    # model
    head: str = _MODEL.head
    filters: tuple[int, ...] = _MODEL.filters
    dense_units: int = _MODEL.dense_units
    rnn_units: int = _MODEL.rnn_units
    column_stride: int = _MODEL.column_stride
    attention: bool = _MODEL.attention
    conv_dropout: float = _MODEL.conv_dropout
    head_dropout: float = _MODEL.head_dropout
    augment: str = "auto"
    init: str | None = None
    # distillation
    teacher: str | None = None
    distill_temperature: float = distillation.TEMPERATURE
    distill_weight: float = distillation.WEIGHT
    # optimisation
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or under a time limit none (`epoch_limit`)
    batch_size: int | None = None  # None: SMALL_BATCH for small labelled sets, else BATCH
    learning_rate: float = DEFAULT_LEARNING_RATE
    warmup_epochs: float = 2.0
    loss: str = "focal"
    focal_gamma: float = focal_loss.GAMMA
    focal_alpha: float = focal_loss.ALPHA
    schedule: str = "auto"  # see rate_schedule
    patience: int = 35
    plateau_patience: int = 8
    bn_statistics: str = "recomputed"  # see caocrvfy.training.batch_stats
    time_limit: float | None = None
    mixed_precision: bool = False
    seed: int = 0
    # output
    out: str | None = None
    resume: str | None = None
    # architecture settings named on the command line (they win over --init's), and patience if named
    given: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
        object.__setattr__(self, "given", tuple(self.given))

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["filters"], data["given"] = list(self.filters), list(self.given)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        """From a saved "training" section; settings of older versions that no longer exist are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def epoch_limit(cfg: TrainConfig) -> int:
    """The epochs a run may train: --epochs when given, else DEFAULT_EPOCHS, or under
    --time-limit as many as the time allows (with a count of 150 there, 200 labelled arithmetic
    captchas of 2-second epochs stopped after 5 of 10 minutes, at 5e-4 of a cosine meant to
    reach the floor at the limit)."""
    if cfg.epochs is not None:
        return cfg.epochs
    return TIME_BOUND_EPOCHS if cfg.time_limit else DEFAULT_EPOCHS


def rate_schedule(schedule: str, validation_images: int) -> str:
    """"plateau" or "cosine" for --schedule: "auto" is cosine under SELECT_EPOCH_FROM validation
    images, whose loss is too small and too noisy to tell a plateau (6 images of swust-cas-2019,
    read right in 84 of 85 epochs, cut the rate 9 times, to 2e-6, in a 10-minute run; see
    docs/notes/2026-12-07-one-font-and-small-validation.md), and plateau from there."""
    if schedule != "auto":
        return schedule
    return "cosine" if validation_images < SELECT_EPOCH_FROM else "plateau"


@dataclass(frozen=True)
class RunPlan:
    """What one run resolved before training: the model, the batches and the device.
    Saved as the "model" and "run" sections of config.json; not changed afterwards."""

    model: ModelConfig
    batch_size: int
    steps_per_epoch: int
    steps_per_execution: int
    jit_compile: bool
    train_images: int
    val_images: int
    device: str
    keras_backend: str
    keras_version: str

    def run_json(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("model")
        return data


def _filters(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"give whole numbers joined by commas, e.g. 16,48,64,96, not {text!r}") from exc


def _keep_colour(text: str) -> str | None:
    try:
        key = optional_key(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return None if key is None else key.text


def _colour_key(text: str) -> str:
    try:
        return ",".join(map(str, parse_pair(text)))
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    from caocrvfy import train as entry  # its docstring is the command's description

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="caocrvfy train", description=entry.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="folder of labelled images (default: synthetic captchas)")
    g.add_argument("--unlabelled", help="folder of unlabelled images of the same kind, for --data: the model's "
                                        "confident readings of them are trained on, refreshed as it improves "
                                        "(labelled files in it are left out)")
    g.add_argument("--labelled-first", type=float, metavar="SHARE",
                   help=f"with --unlabelled: the share of the training budget (--time-limit, else the epochs) "
                        f"trained on the labelled images alone before any reading is (default {d.labelled_first:g}; "
                        f"the readings' share of each batch grows from none over the first "
                        f"{RAMP_SHARE * 100:.0f}%% of the budget in any case)")
    g.add_argument("--charset", help=f"characters, ranges allowed (default: {DEFAULT_CHARSET_SPEC} for synthetic, "
                                     "inferred from the labels for --data)")
    g.add_argument("--length", type=int, help=f"synthetic captcha length, the longest with --min-length "
                                              f"(default {d.length})")
    g.add_argument("--min-length", type=int, help="shortest synthetic label; lengths are drawn evenly from "
                                                  "--min-length to --length (default: all --length)")
    g.add_argument("--style", choices=STYLES,
                   help="synthetic captchas: captcha (the captcha library) or varied (many fonts, colours, sizes, "
                        "noise and warps, resized to --width x --height: the base reader's pretraining) "
                        f"(default {d.style})")
    g.add_argument("--width", type=int,
                   help=f"image width (default {d.width}; for --data: from the images' aspect ratio at the height, "
                        "or the size its manifest.json gives; given, every image is resized to it)")
    g.add_argument("--height", type=int,
                   help=f"image height (default {d.height}; for --data: {LABELLED_HEIGHT}, or its manifest's)")
    g.add_argument("--channels", type=int, choices=(1, 3), help=f"1 grey or 3 colour (default {d.channels})")
    g.add_argument("--train-size", type=int,
                   help=f"synthetic training images, an epoch's worth; with --synthetic stream the images drawn before "
                        f"training starts, in a ring buffer of at least {STREAM_MIN_CAPACITY} (default {d.train_size})")
    g.add_argument("--val-size", type=int, help=f"synthetic validation images (default {d.val_size})")
    g.add_argument("--val-fraction", type=float,
                   help=f"share of --data held out, chosen by file name (default {d.val_fraction})")
    g.add_argument("--ignore-case", action="store_true", help="fold labels to lower case")
    g.add_argument("--synthetic", choices=SYNTHETIC_SOURCES,
                   help="how synthetic captchas arrive: cache (PNG files under --cache-dir, reused by later runs), "
                        "memory (drawn into memory each run, 1.5x faster to prepare) or stream (drawn during "
                        "training by all cores but two, for GPUs) (default cache)")
    g.add_argument("--cache-dir", help="where synthetic captchas are cached (default $CAOCRVFY_CACHE, else data/ "
                                       "in a source checkout, else ~/.cache/caocrvfy)")
    g.add_argument("--keep-colour", type=_keep_colour, metavar="COLOUR",
                   help=f"read only the characters of this colour: {', '.join(NAMED_HUES)}, black, or "
                        "#RRGGBB[:TOLERANCE]; every image (--data, --unlabelled, synthetic) is masked to black on "
                        "white for it before training, and the model reads with it (docs/colour-keys.md) "
                        "(default: none, every pixel)")
    g.add_argument("--colour-key", type=_colour_key, metavar="KEEP,DECOY",
                   help="synthetic captchas in two colours, e.g. red,blue: --length characters in KEEP, the label, "
                        "and 1 to --length decoys in DECOY; train on them with --keep-colour KEEP, or with "
                        "--channels 3 for a colour model (default: none)")
    g = p.add_argument_group("model")
    g.add_argument("--head", choices=HEADS, help=f"output head (default {d.head}; sigmoid is the seed's multi-label form)")
    g.add_argument("--filters", type=_filters,
                   help=f"convolution widths, comma-separated (default {','.join(map(str, d.filters))})")
    g.add_argument("--dense-units", type=int, help=f"column feature width (default {d.dense_units})")
    g.add_argument("--rnn-units", type=int, help=f"BiGRU units per direction (default {d.rnn_units})")
    g.add_argument("--column-stride", type=int, choices=COLUMN_STRIDES,
                   help=f"image columns per CTC step (default {d.column_stride}; 8 halves the work after the "
                        "first stage)")
    g.add_argument("--no-attention", dest="attention", action="store_false",
                   help="drop the channel attention after the last convolution")
    g.add_argument("--conv-dropout", type=float,
                   help=f"dropout after the convolutions and the column features (default {d.conv_dropout})")
    g.add_argument("--head-dropout", type=float, help=f"dropout before the output layer (default {d.head_dropout})")
    g.add_argument("--augment", choices=("auto", "on", "off"),
                   help=f"augmentation (default auto: on below {AUGMENT_BELOW} labelled training images)")
    g.add_argument("--init", help="start from this trained model (run folder or model.keras), or none; by default "
                                  "a --data training starts from the shipped base reader (models/base): its "
                                  "architecture is used (settings given here win, e.g. --column-stride 4 to finish a "
                                  "stride-8 model at stride 4) and its weights copied; an output layer for other "
                                  "characters keeps the weights of each character both read (or its other case)")
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", help="a trained CTC reader (run folder or model.keras) whose per-step distributions "
                                     "the model also learns, softened by --distill-temperature; it needs the model's "
                                     "input size, characters and --column-stride (default: none)")
    g.add_argument("--distill-temperature", type=float, help=f"(default {d.distill_temperature})")
    g.add_argument("--distill-weight", type=float,
                   help=f"share of the teacher's term in the loss, the true labels' the rest (default {d.distill_weight})")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help=f"(default {DEFAULT_EPOCHS}; none with --time-limit, which ends the run)")
    g.add_argument("--batch-size", type=int,
                   help=f"(default {BATCH}; {SMALL_BATCH} for fewer than {SMALL_SET_BELOW} labelled training images, "
                        "which need more, smaller steps)")
    g.add_argument("--learning-rate", type=float, help=f"peak rate after warmup (default {d.learning_rate})")
    g.add_argument("--warmup-epochs", type=float, help=f"linear warmup (default {d.warmup_epochs})")
    g.add_argument("--loss", help="loss terms joined by '+': focal, ce (cross-entropy, or plain CTC), dice (soft F1), "
                                  "tversky; for example focal+dice. dice and tversky need --head softmax or sigmoid "
                                  f"(default {d.loss})")
    g.add_argument("--focal-gamma", type=float, help=f"(default {d.focal_gamma})")
    g.add_argument("--focal-alpha", type=float, help=f"(default {d.focal_alpha})")
    g.add_argument("--schedule", choices=("auto", "plateau", "cosine"),
                   help="after warmup: ReduceLROnPlateau on validation loss (factor "
                        f"{PLATEAU_FACTOR}), or cosine decay to the end of --time-limit (or --epochs); auto: cosine "
                        f"under {SELECT_EPOCH_FROM} validation images, plateau from there (default {d.schedule})")
    g.add_argument("--patience", type=int, help=f"early-stopping patience in epochs (default {d.patience})")
    g.add_argument("--plateau-patience", type=int,
                   help=f"epochs without validation-loss progress before the rate is cut (default {d.plateau_patience})")
    g.add_argument("--bn-statistics", choices=("recomputed", "moving"),
                   help="what BatchNorm reads with in validation and in the saved model: statistics recomputed "
                        f"from {batch_stats.STAT_IMAGES} clean training images before each validation, or Keras's "
                        f"moving averages over about the last 100 steps (default {d.bn_statistics})")
    g.add_argument("--time-limit", type=float,
                   help="the whole run, drawing and loading the data included, ends within this many minutes, "
                        "keeping the best model; a resumed run counts the training minutes of its earlier runs "
                        "(default: none)")
    g.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU")
    g.add_argument("--seed", type=int, help=f"(default {d.seed})")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="run folder (default: models/runs/<time>)")
    g.add_argument("--resume", help="run folder of an interrupted training to continue")
    return p


RANGES = {  # setting: (lowest, highest, whether the lowest is allowed)
    "length": (1, None, True), "min_length": (1, None, True), "width": (1, None, True), "height": (1, None, True),
    "train_size": (1, None, True), "val_size": (1, None, True), "val_fraction": (0.0, 1.0, False),
    "dense_units": (1, None, True), "rnn_units": (1, None, True), "conv_dropout": (0.0, 0.95, True),
    "head_dropout": (0.0, 0.95, True), "labelled_first": (0.0, 0.9, True), "epochs": (1, None, True), "batch_size": (1, None, True),
    "learning_rate": (0.0, None, False), "warmup_epochs": (0.0, None, True), "time_limit": (0.0, None, False),
    "patience": (1, None, True), "plateau_patience": (1, None, True),
    "distill_temperature": (0.0, None, False), "distill_weight": (0.0, 1.0, True),
}
BUDGET = ("epochs", "time_limit", "patience")  # what --resume lets a user change
# Settings whose default depends on the run, so TrainConfig.given records whether they were named:
# --patience (off for a small labelled set), --width and --height (from a --data folder's images).
NAMED_ONLY = ("patience", "width", "height")


def check_ranges(parser: argparse.ArgumentParser, cfg: TrainConfig) -> None:
    """One clear message for a setting out of range, before anything is drawn or built."""
    for name, (low, high, low_ok) in RANGES.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if value < low or (value == low and not low_ok) or (high is not None and value > high):
            bound = f"{'at least' if low_ok else 'above'} {low}" + (f" and at most {high}" if high is not None else "")
            parser.error(f"--{name.replace('_', '-')} must be {bound}, not {value}")
    if any(f <= 0 for f in cfg.filters):
        parser.error(f"--filters must be positive widths, not {','.join(map(str, cfg.filters))}")


_UNSET = object()


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """The command line as a TrainConfig; with --resume, the run's saved settings (the budget
    given here wins)."""
    parser = build_parser()
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"given"}
    # Pre-filled with a marker, the namespace tells the settings named on the command line apart.
    named = vars(parser.parse_args(argv if argv is not None else sys.argv[1:],
                                   namespace=argparse.Namespace(**dict.fromkeys(fields, _UNSET))))
    named = {k: v for k, v in named.items() if v is not _UNSET}
    if "resume" in named:
        if not (Path(named["resume"]) / "config.json").is_file():
            parser.error(f"--resume {named['resume']} is not a run folder (it has no config.json): give the folder "
                         "a training wrote, or start a new training.")
        try:
            saved = read_config(Path(named["resume"]) / "config.json")
        except DataError as exc:
            parser.error(f"--resume {named['resume']}: {exc}")
        ignored = sorted(set(named) - set(BUDGET) - {"resume"})
        if ignored:
            parser.error(f"--resume keeps the run's settings; only {', '.join('--' + b.replace('_', '-') for b in BUDGET)} "
                         f"may be given again, not {', '.join('--' + n.replace('_', '-') for n in ignored)}")
        cfg = dataclasses.replace(TrainConfig.from_json(saved["training"]), resume=named["resume"],
                                  out=named["resume"], **{k: named[k] for k in BUDGET if k in named})
    else:
        cfg = TrainConfig(**named, given=tuple(name for name in ARCHITECTURE + NAMED_ONLY if name in named))
    check_ranges(parser, cfg)
    check_choices(parser, cfg)
    return cfg


def check_choices(parser: argparse.ArgumentParser, cfg: TrainConfig) -> None:
    """Settings that cannot work together, refused before anything is drawn or built."""
    from caocrvfy.losses import parse_loss

    try:
        terms, _ = parse_loss(cfg.loss)
    except ValueError as exc:
        parser.error(f"--loss: {exc}")
    if cfg.head == "ctc" and (len(terms) > 1 or terms[0] not in ("focal", "ce")):
        parser.error(f"--loss {cfg.loss} needs per-position outputs: give --head softmax or sigmoid, "
                     "or --loss focal or ce for the ctc head")
    if cfg.teacher and cfg.head != "ctc":
        parser.error(f"--teacher needs the ctc head: the teacher's per-step distributions are CTC outputs, "
                     f"not --head {cfg.head}")
    if cfg.unlabelled and not cfg.data:
        parser.error("--unlabelled needs --data: the labelled images calibrate which readings are trusted")
    if cfg.labelled_first and not cfg.unlabelled:
        parser.error("--labelled-first sets when the readings of --unlabelled images join the training: give "
                     "--unlabelled DIR too")
    if cfg.min_length is not None and cfg.min_length > cfg.length:
        parser.error(f"--min-length {cfg.min_length} is above --length {cfg.length}: the longest label comes last")
    if cfg.charset is not None and not cfg.charset.strip():
        parser.error("--charset is empty: give characters such as 0-9a-z")
    if cfg.colour_key and cfg.data:
        parser.error("--colour-key draws synthetic captchas, --data reads a folder: give one of them "
                     "(caocrvfy generate --colour-key writes a folder to train on)")
    if cfg.colour_key and cfg.style != "captcha":
        parser.error(f"--colour-key draws its own two-colour captchas: give it without --style {cfg.style}")
    if not cfg.data and cfg.init in (None, "none"):  # synthetic captchas: the model's input is known now
        try:
            ModelConfig(max_length=cfg.length, height=cfg.height, width=cfg.width, head=cfg.head,
                        column_stride=cfg.column_stride).check("the options")
        except DataError as exc:
            parser.error(str(exc).replace("the options: ", "--"))


def saved_config_json(cfg: TrainConfig, plan: RunPlan) -> str:
    """config.json's text: version, model, training and run sections."""
    from caocrvfy.model_config import VERSION

    return json.dumps({"version": VERSION, "model": plan.model.to_json(), "training": cfg.to_json(),
                       "run": plan.run_json()}, indent=2)
