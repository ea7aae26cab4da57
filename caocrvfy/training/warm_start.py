"""`--init`: start a training from another reader's weights, adopting its architecture.

A training on a labelled folder starts from the shipped base reader (`models/base`) unless
`--init` names another model or `none`; synthetic trainings start from scratch."""

from __future__ import annotations

import logging

from caocrvfy.data.charset import output_columns
from caocrvfy.errors import DataError
from caocrvfy.locations import base_model, resolve_model_path
from caocrvfy.model_config import ARCHITECTURE, ModelConfig, load_model_config
from caocrvfy.model_enhanced import load_saved_model
from caocrvfy.training.config import TrainConfig

log = logging.getLogger(__name__)


NO_INIT = "none"


def chosen_init(cfg: TrainConfig) -> str | None:
    """The model a new run starts from: --init as given, `none` for none, and by default the
    base reader for a labelled folder (when it is installed) and nothing for synthetic captchas."""
    if cfg.init is not None:
        return None if cfg.init.lower() == NO_INIT else cfg.init
    if cfg.data and (base_model() / "model.keras").is_file():
        return str(base_model())
    if cfg.data:
        log.warning(f"the base reader ({base_model()}) is not installed: training from scratch, which needs "
                    "far more labels")
    return None


def read_init(init: str):
    """The --init model (uncompiled) and its ModelConfig."""
    path, config_path = resolve_model_path(init)
    model_config = load_model_config(config_path)
    if path.suffix != ".keras":
        raise DataError(f"--init {init}: {path.name} is an export; give a run folder or its model.keras.")
    return load_saved_model(path), model_config


def architecture(cfg: TrainConfig, init: ModelConfig | None) -> dict:
    """The architecture fields of the run's model: the command line's, where --init is given
    its model's for every setting not named on the command line, so that its weights fit. (The
    colour key is not among them: it is always this run's, what its images were masked to.)"""
    chosen = {name: getattr(cfg, name) for name in ARCHITECTURE}
    if init is None:
        return chosen
    if init.keep_colour and init.keep_colour != cfg.keep_colour:
        log.warning(f"{cfg.init} reads with --keep-colour {init.keep_colour}, this run with {cfg.keep_colour or 'none'}: "
                    "the new model reads as this run's images are masked")
    for name in ARCHITECTURE:
        theirs = getattr(init, name)
        if name in cfg.given and chosen[name] != theirs:
            log.info(f"{name}: {chosen[name]} as given, not {theirs} as in {cfg.init}; the weights that fit are copied")
        else:
            chosen[name] = theirs
    return chosen


def transfer_weights(source, target, source_charset: str | None = None, target_charset: str | None = None) -> int:
    """Copies weights layer by layer where names and shapes match; returns how many layers.
    Given both models' output-unit character sets (`ModelConfig.unit_charset`), a CTC output
    layer whose characters differ keeps the source's weights for each character the two share
    (see `output_columns`); the rest start new."""
    copied = 0
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        other = by_name.get(layer.name)
        if other is None or not layer.weights or not layer.trainable:  # fixed layers are set by build_model
            continue
        mine, theirs = layer.get_weights(), other.get_weights()
        if len(mine) == len(theirs) and all(a.shape == b.shape for a, b in zip(mine, theirs)):
            layer.set_weights(theirs)
            copied += 1
        elif layer.name == "ctc_output" and source_charset and target_charset and len(mine) == 2 \
                and mine[0].shape[0] == theirs[0].shape[0]:
            kernel, bias = mine
            for unit, source_unit in enumerate(output_columns(source_charset, target_charset)):
                if source_unit is not None:
                    kernel[:, unit], bias[unit] = theirs[0][:, source_unit], theirs[1][source_unit]
            layer.set_weights([kernel, bias])
            copied += 1
    return copied
