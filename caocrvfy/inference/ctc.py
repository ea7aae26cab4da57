"""CTC maths on one image's softmax output (steps, blank + classes), blank = class 0:
what a path reads, the most probable path of a given length, and the probability of a label
summed over all its alignments."""

from __future__ import annotations

import numpy as np


def ctc_collapse(path: np.ndarray) -> np.ndarray:
    """What a CTC path reads: repeats merged, blanks (0) dropped."""
    return path[(path != 0) & np.concatenate([[True], path[1:] != path[:-1]])]


def ctc_label_probability(probs: np.ndarray, label: np.ndarray) -> float:
    """P(label | image) under CTC: the sum over every alignment of `label` (1-based class
    indices, blank 0) of the product of its per-step probabilities (the forward algorithm,
    rescaled at each step). `probs` is one image's (steps, blank + classes) softmax output."""
    extended = np.zeros(2 * len(label) + 1, np.int64)
    extended[1::2] = label
    # A step may skip the blank between two different characters.
    skip = np.zeros(len(extended), bool)
    skip[3::2] = extended[3::2] != extended[1:-2:2]
    alpha = np.zeros(len(extended))
    alpha[0] = probs[0, 0]
    if len(extended) > 1:
        alpha[1] = probs[0, extended[1]]
    log_scale = 0.0
    for t in range(1, len(probs)):
        moved = alpha.copy()
        moved[1:] += alpha[:-1]
        moved[2:] += np.where(skip[2:], alpha[:-2], 0.0)
        alpha = moved * probs[t, extended]
        total = alpha.sum()
        if total <= 0:
            return 0.0
        alpha /= total
        log_scale += np.log(total)
    return float(np.exp(log_scale + np.log(max(alpha[-2:].sum() if len(alpha) > 1 else alpha[-1], 1e-300))))


def ctc_best_path(probs: np.ndarray, min_length: int = 0, max_length: int | None = None,
                  allowed: np.ndarray | None = None) -> np.ndarray | None:
    """The most probable CTC path that reads from `min_length` to `max_length` characters (None:
    no upper bound), each of them one of the `allowed` classes (a boolean mask over the 1-based
    classes; None: all): Viterbi over the number of characters read so far and the last symbol.
    Its 1-based classes, or None when no path meets the constraint (too few steps, or nothing
    allowed while characters are required). The unconstrained best path is the per-step argmax,
    so a reading that already meets the constraint is kept as it is."""
    steps, symbols = probs.shape
    logp = np.log(np.clip(probs, 1e-30, 1.0))
    if allowed is not None:
        logp[:, 1:] = np.where(np.asarray(allowed, bool)[None, :], logp[:, 1:], -np.inf)
    if max_length is None and min_length == 0:  # no count to track: the best step by step
        return ctc_collapse(logp.argmax(1))
    length = steps if max_length is None else max_length
    if min_length > length:
        return None
    # score[k, s]: best log probability of a path prefix that has read k characters and whose
    # last symbol is s (0 = blank); back[t, k, s] = (k, s) it came from.
    score = np.full((length + 1, symbols), -np.inf)
    score[0, 0] = logp[0, 0]
    if length:
        score[1, 1:] = logp[0, 1:]
    back = np.zeros((steps, length + 1, symbols, 2), np.int64)
    for t in range(1, steps):
        new = np.full_like(score, -np.inf)
        # A blank keeps the count: from any symbol.
        from_any = score.argmax(1)
        new[:, 0] = score[np.arange(length + 1), from_any] + logp[t, 0]
        back[t, :, 0, 0], back[t, :, 0, 1] = np.arange(length + 1), from_any
        # Repeating the last character keeps the count.
        stay = score[:, 1:] + logp[t, 1:]
        new[:, 1:] = stay
        back[t, :, 1:, 0] = np.arange(length + 1)[:, None]
        back[t, :, 1:, 1] = np.arange(1, symbols)[None, :]
        # A new character (after a blank or a different character) adds one. The best symbol
        # to come from is the best of the others: the first best, or for that very character
        # the second best (both as argmax picks them, first index on ties).
        prev = score[:-1]
        rows = np.arange(length)
        first = prev.argmax(1)
        masked = prev.copy()
        masked[rows, first] = -np.inf
        second = masked.argmax(1)
        chars = np.arange(1, symbols)
        best_prev = np.where(chars[None, :] == first[:, None], second[:, None], first[:, None])
        moved = prev[rows[:, None], best_prev] + logp[t, 1:][None, :]
        better = moved > new[1:, 1:]
        new[1:, 1:] = np.where(better, moved, new[1:, 1:])
        back[t, 1:, 1:, 0] = np.where(better, rows[:, None], back[t, 1:, 1:, 0])
        back[t, 1:, 1:, 1] = np.where(better, best_prev, back[t, 1:, 1:, 1])
        score = new
    ends = score[min_length:].max(1)
    if not np.isfinite(ends).any():
        return None
    k = min_length + int(ends.argmax())  # the best count in range; the shortest on ties
    s = int(score[k].argmax())
    path = [s]
    for t in range(steps - 1, 0, -1):
        k, s = back[t, k, s]
        path.append(int(s))
    return ctc_collapse(np.array(path[::-1]))


def ctc_best_path_accepted(probs: np.ndarray, delta: np.ndarray, accepting: np.ndarray) -> np.ndarray | None:
    """The most probable CTC path whose reading a finite automaton accepts: `delta[q, c]` is the
    state after reading class c + 1 in state q (-1: not allowed there), the start state is 0 and
    `accepting[q]` says whether a reading may end in q. Viterbi over the automaton's state and
    the last symbol, as `ctc_best_path` over the count; its 1-based classes, or None when no path
    is accepted."""
    steps, symbols = probs.shape
    states = len(delta)
    logp = np.log(np.clip(probs, 1e-30, 1.0))
    chars = np.arange(1, symbols)
    # score[q, s]: best log probability of a prefix that leaves the automaton in q with last
    # symbol s (0 = blank); back[t, q, s] = the (q, s) it came from.
    score = np.full((states, symbols), -np.inf)
    score[0, 0] = logp[0, 0]
    reachable = delta[0] >= 0
    score[delta[0][reachable], chars[reachable]] = logp[0, chars[reachable]]
    back = np.zeros((steps, states, symbols, 2), np.int64)
    for t in range(1, steps):
        # A blank or a repeat of the last character keeps the state.
        from_any = score.argmax(1)
        new = np.full_like(score, -np.inf)
        new[:, 0] = score[np.arange(states), from_any] + logp[t, 0]
        back[t, :, 0, 0], back[t, :, 0, 1] = np.arange(states), from_any
        new[:, 1:] = score[:, 1:] + logp[t, 1:]
        back[t, :, 1:, 0] = np.arange(states)[:, None]
        back[t, :, 1:, 1] = chars[None, :]
        # A new character (after a blank or another character) moves along the automaton.
        for q in range(states):
            row = score[q]
            first = int(row.argmax())
            if not np.isfinite(row[first]):
                continue
            masked = row.copy()
            masked[first] = -np.inf
            best_prev = np.where(chars == first, int(masked.argmax()), first)
            moved = row[best_prev] + logp[t, 1:]
            targets = delta[q]
            for c in np.flatnonzero((targets >= 0) & (moved > new[targets, chars])):
                new[targets[c], c + 1] = moved[c]
                back[t, targets[c], c + 1] = (q, best_prev[c])
        score = new
    ends = np.where(np.asarray(accepting, bool)[:, None], score, -np.inf)
    if not np.isfinite(ends).any():
        return None
    q, s = np.unravel_index(int(ends.argmax()), ends.shape)
    path = [int(s)]
    for t in range(steps - 1, 0, -1):
        q, s = back[t, q, s]
        path.append(int(s))
    return ctc_collapse(np.array(path[::-1]))
