"""Raw model outputs to text with a confidence, for every head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caocrvfy.data.charset import decode_indices
from caocrvfy.errors import DataError
from caocrvfy.inference.arithmetic import expression_automaton
from caocrvfy.inference.ctc import ctc_best_path, ctc_best_path_accepted, ctc_collapse, ctc_label_probability


@dataclass
class Prediction:
    text: str
    confidence: float


@dataclass(frozen=True)
class Constraint:
    """What a site allows a reading to be: its length (`min_length` to `max_length`, either open),
    its characters (`allowed`; None: the model's whole set) and, with `expression`, an arithmetic
    expression that `solve` answers (`expression_automaton`). CTC models read the best path that
    meets it, not a cut of the free reading; per-position heads pick the best allowed class at
    each position (their length is the model's; `expression` does not bind them)."""

    min_length: int | None = None
    max_length: int | None = None
    allowed: str | None = None
    expression: bool = False

    @classmethod
    def of(cls, length: int | None = None, min_length: int | None = None, max_length: int | None = None,
           allowed: str | None = None, expression: bool = False) -> "Constraint | None":
        """From the command line's or a request's fields (`length` sets both bounds); None when
        nothing is constrained. Raises DataError for bounds that contradict each other."""
        if length is not None:
            if (min_length is not None and min_length != length) or (max_length is not None and max_length != length):
                raise DataError(f"length {length} contradicts min/max length {min_length}/{max_length}: give one or "
                                "the other.")
            min_length = max_length = length
        for value in (min_length, max_length):
            if value is not None and value < 0:
                raise DataError(f"a length is a whole number of characters, 0 or more, not {value}.")
        if min_length is not None and max_length is not None and min_length > max_length:
            raise DataError(f"the shortest reading allowed ({min_length}) is longer than the longest ({max_length}).")
        if allowed is not None and not allowed:
            raise DataError("the allowed characters are empty: give some, such as '0-9'.")
        constraint = cls(min_length, max_length, allowed, expression)
        return None if constraint == cls() else constraint

    def mask(self, charset: str) -> np.ndarray | None:
        """The allowed classes of `charset` as a boolean mask, or None for all; DataError naming
        the characters the model cannot read."""
        if self.allowed is None:
            return None
        unknown = sorted(set(self.allowed) - set(charset))
        if unknown:
            raise DataError(f"the allowed characters {''.join(unknown)!r} are not in the model's character set "
                            f"{charset!r}: drop them or use a model that reads them.")
        return np.array([c in self.allowed for c in charset])

    def check(self, charset: str, head: str, positions: int | None = None) -> None:
        """DataError when a model with this character set and head cannot meet the constraint:
        characters it cannot read, or a length other than a per-position head's `positions`."""
        self.mask(charset)
        if head != "ctc" and positions is not None and (
                (self.min_length or 0) > positions or (self.max_length is not None and self.max_length < positions)):
            raise DataError(f"this model reads exactly {positions} characters ({head} head), outside the length asked "
                            f"for ({self.min_length}..{self.max_length}): drop the length or use a CTC model.")

    def merged(self, length: int | None) -> "Constraint":
        """With a fixed-length model's `length` (every training label had it) as both bounds,
        unless the constraint sets a length itself."""
        if length is None or self.min_length is not None or self.max_length is not None:
            return self
        return Constraint(length, length, self.allowed, self.expression)


def _accepts(automaton: tuple[np.ndarray, np.ndarray], label: np.ndarray) -> bool:
    """Whether the automaton (delta, accepting) accepts the 1-based classes `label`."""
    delta, accepting = automaton
    state = 0
    for c in label:
        state = int(delta[state, c - 1])
        if state < 0:
            return False
    return bool(accepting[state])


def restricted_automaton(automaton: tuple[np.ndarray, np.ndarray], mask: np.ndarray | None, lo: int, hi: int | None,
                steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The automaton held to the `mask`'s classes and to lo..hi characters (a reading of `steps`
    steps has at most that many): its product with a count, when a length is set."""
    delta, accepting = automaton
    if mask is not None:
        delta = np.where(mask[None, :], delta, -1)
    if lo == 0 and hi is None:
        return delta, accepting
    top = min(steps if hi is None else hi, steps)
    counts = top + 1
    product = np.full((len(delta) * counts, delta.shape[1]), -1, np.int64)
    for k in range(top):  # state (q, k) is q * counts + k; the start (0, 0) stays 0
        product[np.arange(len(delta)) * counts + k] = np.where(delta >= 0, delta * counts + k + 1, -1)
    final = np.zeros(len(product), bool)
    for k in range(lo, counts):
        final[np.arange(len(delta)) * counts + k] = accepting
    return product, final


def decode_outputs(outputs: np.ndarray, head: str, charset: str, length: int | None = None,
                   constraint: Constraint | None = None) -> list[Prediction]:
    """Turns raw model outputs into strings with a confidence: for CTC, the probability of the
    read string summed over all its alignments (`ctc_label_probability`); for the per-position
    heads, the product of the chosen class probabilities. `length`: every string has exactly
    this many characters (a fixed-length model), so a CTC read of another length is replaced by
    the best path of that length. `constraint`: see `Constraint`."""
    outputs = np.asarray(outputs, dtype=np.float32)
    rule = (constraint or Constraint()).merged(length)
    mask = rule.mask(charset)
    if head == "ctc":
        lo, hi = rule.min_length or 0, rule.max_length
        grammar = expression_automaton(charset) if rule.expression else None
        # Every reading of the batch has the same steps: one restricted automaton serves them all.
        held = restricted_automaton(grammar, mask, lo, hi, outputs.shape[1]) if grammar is not None else None
        results = []
        for probs in outputs:
            label = ctc_collapse(probs.argmax(-1))
            allowed_ok = mask is None or bool(mask[label - 1].all())
            if not (allowed_ok and lo <= len(label) and (hi is None or len(label) <= hi)
                    and (grammar is None or _accepts(grammar, label))):
                if grammar is None:
                    fitted = ctc_best_path(probs, lo, hi, mask)
                else:
                    fitted = ctc_best_path_accepted(probs, *held)
                label = label if fitted is None else fitted  # no path meets it: the free reading
            confidence = min(1.0, ctc_label_probability(probs.astype(np.float64), label))
            results.append(Prediction(decode_indices(label, charset), confidence))
        return results
    rule.check(charset, head, outputs.shape[1])
    scores = outputs if mask is None else np.where(mask[None, None, :], outputs, -1.0)
    best = scores.argmax(-1)
    chosen = np.take_along_axis(outputs, best[..., None], -1)[..., 0]
    if head == "sigmoid":  # independent units: normalise each position to a distribution
        chosen = chosen / np.maximum(outputs.sum(-1), 1e-12)
    confidence = np.exp(np.log(np.clip(chosen, 1e-12, 1.0)).sum(-1))
    return [Prediction(decode_indices(row + 1, charset), float(conf)) for row, conf in zip(best, confidence)]
