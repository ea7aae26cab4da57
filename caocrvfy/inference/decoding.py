"""Raw model outputs to text with a confidence, for every head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caocrvfy.data.charset import decode_indices
from caocrvfy.inference.ctc import ctc_best_path_of_length, ctc_collapse, ctc_label_probability


@dataclass
class Prediction:
    text: str
    confidence: float



def decode_outputs(outputs: np.ndarray, head: str, charset: str, length: int | None = None) -> list[Prediction]:
    """Turns raw model outputs into strings with a confidence: for CTC, the probability of the
    read string summed over all its alignments (`ctc_label_probability`); for the per-position
    heads, the product of the chosen class probabilities. `length`: every string has exactly
    this many characters (a fixed-length model), so a CTC read of another length is replaced by
    the best path of that length."""
    outputs = np.asarray(outputs, dtype=np.float32)
    best = outputs.argmax(-1)
    if head == "ctc":
        results = []
        for row, probs in zip(best, outputs):
            label = ctc_collapse(row)
            if length and len(label) != length:
                fitted = ctc_best_path_of_length(probs, length)
                label = label if fitted is None else fitted
            confidence = min(1.0, ctc_label_probability(probs.astype(np.float64), label))
            results.append(Prediction(decode_indices(label, charset), confidence))
        return results
    chosen = np.take_along_axis(outputs, best[..., None], -1)[..., 0]
    if head == "sigmoid":  # independent units: normalise each position to a distribution
        chosen = chosen / np.maximum(outputs.sum(-1), 1e-12)
    confidence = np.exp(np.log(np.clip(chosen, 1e-12, 1.0)).sum(-1))
    return [Prediction(decode_indices(row + 1, charset), float(conf)) for row, conf in zip(best, confidence)]
