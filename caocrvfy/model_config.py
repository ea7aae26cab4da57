"""What a reader is: its architecture and how its output is read, the one source of both.

`ModelConfig` holds every architecture default. `build_model(**fields)` builds from it,
`caocrvfy train` saves it as the "model" section of config.json next to model.keras, and the
predictor, export, serving and `--init` read it back from there.

config.json (version 2):

    {"version": 2,
     "model": {ModelConfig fields},
     "training": {the TrainConfig that trained it},
     "run": {what was resolved when it ran: device, backend, batch size, images, ...}}

Older config.json files (version 1, the shipped models among them) are a flat dump of the
training settings with a "resolved" block; `migrate` turns one into version 2 when it is read
(it is not rewritten on disk). The architecture settings it needs are in the flat dump, with
these exceptions: files written before `column_stride` existed were built with stride 4, and
the layouts that the project has since removed (`sequence` "conv", `stem` "patch",
`input_scale` != 1) are kept under "legacy" for the record; such models still read (their
.keras file carries the layers), but `--init` from them copies only the layers that fit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from caocrvfy.data.charset import both_cases
from caocrvfy.data.colour_keys import ColourKey
from caocrvfy.data.synthetic import CaptchaSpec
from caocrvfy.errors import DataError

VERSION = 2
_CAPTCHA = CaptchaSpec()  # the default reader reads the default synthetic captcha
HEADS = ("ctc", "softmax", "sigmoid")
COLUMN_STRIDES = (4, 8)


@dataclass(frozen=True)
class ModelConfig:
    """A reader's architecture and output; every field is a `build_model` keyword.

    charset: the characters, sorted; class i + 1 is charset[i] (0 is the CTC blank).
    max_length: the longest label; fixed_length: every training label had that length, so
    CTC reads are held to it. height, width, channels: the model's uint8 input. head: `ctc`
    (any length), `softmax` (one per position) or `sigmoid` (the seed's multi-label form).
    column_stride: image columns per CTC step. augment: Keras augmentation layers active in
    training. ignore_case: the labels were case-folded, so readings compare case-folded.
    keep_colour: a `ColourKey`'s text ("red", "#c81e1e:40"): the model was trained on images
    masked to that colour, so it reads them masked too (files without it read None: no mask).
    merge_case: (ctc) the output layer has a unit for each letter in both cases
    (`unit_charset`) and a fixed layer adds each letter's two probabilities into the charset's
    one: labels of one case for a site that draws both, read by a model that tells the cases
    apart (the base). Each glyph keeps the unit that reads it, in whichever case it is drawn.
    """

    charset: str = _CAPTCHA.charset
    max_length: int = _CAPTCHA.length
    fixed_length: bool = True
    head: str = "ctc"
    height: int = _CAPTCHA.height
    width: int = _CAPTCHA.width
    channels: int = 1
    filters: tuple[int, ...] = (16, 48, 64, 96)
    dense_units: int = 192
    rnn_units: int = 96
    column_stride: int = 8
    attention: bool = True
    augment: bool = False
    conv_dropout: float = 0.2
    head_dropout: float = 0.4
    ignore_case: bool = False
    keep_colour: str | None = None
    merge_case: bool = False
    legacy: dict = field(default_factory=dict, compare=False)  # removed layouts an old model was built with

    def __post_init__(self):
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.charset)

    @property
    def unit_charset(self) -> str:
        """The characters of the CTC output layer's units: the charset, in both cases with merge_case."""
        return both_cases(self.charset) if self.merge_case else self.charset

    def check(self, source: str = "the model config") -> "ModelConfig":
        """Raises DataError naming `source` and the field when a value cannot describe a reader."""
        def bad(name: str, why: str):
            raise DataError(f"{source}: {name} {getattr(self, name)!r} {why}.")

        if not self.charset:
            bad("charset", "is empty; the model needs its character set")
        if len(set(self.charset)) != len(self.charset):
            bad("charset", "repeats characters")
        if self.head not in HEADS:
            bad("head", f"is not one of {', '.join(HEADS)}")
        for name in ("max_length", "height", "width", "channels", "dense_units", "rnn_units"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a positive whole number")
        if self.channels not in (1, 3):
            bad("channels", "must be 1 (grey) or 3 (colour)")
        if not self.filters or any(f < 1 for f in self.filters):
            bad("filters", "must be positive widths")
        if self.column_stride not in COLUMN_STRIDES:
            bad("column_stride", f"must be one of {COLUMN_STRIDES}")
        for name in ("conv_dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, "must be at least 0 and below 1")
        if self.merge_case and self.head != "ctc":
            bad("merge_case", "needs the ctc head")
        if self.keep_colour is not None:
            try:
                ColourKey.parse(self.keep_colour)
            except DataError as exc:
                raise DataError(f"{source}: keep_colour: {exc}") from exc
        steps = -(-self.width // self.column_stride)
        if self.head == "ctc" and steps < 2 * self.max_length + 1:
            bad("width", f"gives {steps} CTC steps, too few for {self.max_length} characters; use a width of at "
                         f"least {self.column_stride * (2 * self.max_length + 1)}"
                         f"{' or a column stride of 4' if self.column_stride == 8 else ''}")
        return self

    def check_outputs(self, shape: tuple, source: str, model: str) -> None:
        """Raises DataError when a model's output shape (batch, steps or positions, classes) does
        not fit this config: another number of characters, or positions for a length."""
        classes = shape[-1] if shape else None
        want = self.num_classes + (1 if self.head == "ctc" else 0)
        if isinstance(classes, int) and classes != want:
            raise DataError(f"{source}: charset has {self.num_classes} characters but {model} reads "
                            f"{classes - (1 if self.head == 'ctc' else 0)}: use the config.json saved with this model.")
        positions = shape[-2] if len(shape) >= 3 else None
        if self.head != "ctc" and isinstance(positions, int) and positions != self.max_length:
            raise DataError(f"{source}: max_length is {self.max_length} but {model} reads {positions} positions: "
                            "use the config.json saved with this model.")

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["filters"] = list(self.filters)
        if not self.legacy:
            data.pop("legacy")
        return data

    @classmethod
    def from_json(cls, data: dict, source: str = "the model config") -> "ModelConfig":
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DataError(f"{source}: unknown model setting(s) {', '.join(unknown)}; "
                            "it was written by a newer caocrvfy, or edited by hand.")
        try:
            return cls(**data).check(source)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{source}: {exc}.") from exc


ARCHITECTURE = ("channels", "filters", "dense_units", "rnn_units", "column_stride", "attention")
"""The fields `--init` adopts from the model it starts from (so that its weights fit)."""

LEGACY_DEFAULTS = {"column_stride": 4}  # version-1 files written before a setting existed
REMOVED_LAYOUTS = {"sequence": "gru", "stem": "conv", "input_scale": 1.0}  # and their only kept value


def migrate(raw: dict, source: str = "config.json") -> dict:
    """A version-1 config.json (flat training settings plus "resolved") as version 2."""
    if raw.get("version") == VERSION:
        return raw
    resolved = raw.get("resolved")
    if not isinstance(resolved, dict):
        raise DataError(f"{source} has neither a version-2 \"model\" section nor a \"resolved\" block: "
                        "it is not a caocrvfy config.json; use the one saved with the model.")
    try:
        height, width, channels = resolved["input_shape"]
        defaults = ModelConfig()
        model = {
            "charset": resolved["charset"], "max_length": resolved["max_length"],
            "fixed_length": bool(resolved.get("fixed_length", False)), "head": resolved["head"],
            "height": height, "width": width, "channels": channels,
            "augment": bool(resolved.get("augment", False)), "ignore_case": bool(raw.get("ignore_case", False)),
        }
        for name in ("filters", "dense_units", "rnn_units", "column_stride", "attention", "conv_dropout",
                     "head_dropout"):
            model[name] = raw.get(name, LEGACY_DEFAULTS.get(name, getattr(defaults, name)))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source} lacks the setting {exc} that a caocrvfy model needs: "
                        "use the config.json saved with the model.") from exc
    model["filters"] = list(model["filters"])
    legacy = {k: raw[k] for k, kept in REMOVED_LAYOUTS.items() if k in raw and raw[k] != kept}
    if legacy:
        model["legacy"] = legacy
    run = {k: v for k, v in resolved.items() if k not in ("charset", "max_length", "fixed_length", "head",
                                                          "input_shape", "augment")}
    training = {k: v for k, v in raw.items() if k != "resolved"}
    return {"version": VERSION, "model": model, "training": training, "run": run, "migrated_from": 1}


def read_config(path: str | Path) -> dict:
    """config.json as version 2 (migrated when older), its model section checked."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing: a model needs the config.json it was saved with.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); use the config.json saved with the model.") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path} is not a caocrvfy config.json (a JSON object was expected).")
    config = migrate(raw, str(path))
    if not isinstance(config.get("model"), dict):
        raise DataError(f"{path} has no \"model\" section; use the config.json saved with the model.")
    ModelConfig.from_json(config["model"], str(path))  # checked once, here
    return config


def model_config_of(config: dict, source: str = "config.json") -> ModelConfig:
    """The ModelConfig of a (version-2) config dict."""
    return ModelConfig.from_json(config["model"], source)


def load_model_config(path: str | Path) -> ModelConfig:
    return model_config_of(read_config(path), str(path))
