"""`--init`: start a training from another reader's weights, adopting its architecture."""

from __future__ import annotations

import logging

from caocrvfy.errors import DataError
from caocrvfy.locations import resolve_model_path
from caocrvfy.model_config import ARCHITECTURE, ModelConfig, load_model_config
from caocrvfy.model_enhanced import load_saved_model
from caocrvfy.training.config import TrainConfig

log = logging.getLogger(__name__)


def read_init(cfg: TrainConfig):
    """The --init model (uncompiled) and its ModelConfig."""
    path, config_path = resolve_model_path(cfg.init)
    model_config = load_model_config(config_path)
    if path.suffix != ".keras":
        raise DataError(f"--init {cfg.init}: {path.name} is an export; give a run folder or its model.keras.")
    return load_saved_model(path), model_config


def architecture(cfg: TrainConfig, init: ModelConfig | None) -> dict:
    """The architecture fields of the run's model: the command line's, where --init is given
    its model's for every setting not named on the command line, so that its weights fit."""
    chosen = {name: getattr(cfg, name) for name in ARCHITECTURE}
    if init is None:
        return chosen
    for name in ARCHITECTURE:
        theirs = getattr(init, name)
        if name in cfg.given and chosen[name] != theirs:
            log.info(f"{name}: {chosen[name]} as given, not {theirs} as in {cfg.init}; the weights that fit are copied")
        else:
            chosen[name] = theirs
    return chosen


def transfer_weights(source, target) -> int:
    """Copies weights layer by layer where names and shapes match; returns how many layers."""
    copied = 0
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        other = by_name.get(layer.name)
        if other is None or not layer.weights:
            continue
        mine, theirs = layer.get_weights(), other.get_weights()
        if len(mine) == len(theirs) and all(a.shape == b.shape for a, b in zip(mine, theirs)):
            layer.set_weights(theirs)
            copied += 1
    return copied
