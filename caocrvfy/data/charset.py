"""Character sets: parsing the `0-9a-zA-Z` notation and mapping text to class indices.

Class indices start at 1 so that 0 can be the CTC blank and the padding of shorter labels;
the sigmoid and softmax heads subtract 1 before one-hot encoding.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CHARSET_SPEC = "0-9a-zA-Z"

def parse_charset(spec: str) -> str:
    """Expands ranges such as `0-9`, `a-z`, `A-F` and returns the sorted, de-duplicated set."""
    chars: set[str] = set()
    i = 0
    while i < len(spec):
        first, dash, last = spec[i : i + 3].ljust(3)
        if dash == "-" and first.isalnum() and last.isalnum() and first <= last:
            chars.update(chr(c) for c in range(ord(first), ord(last) + 1))
            i += 3
        else:
            chars.add(spec[i])
            i += 1
    if not chars:
        raise ValueError("The character set is empty: give characters such as '0-9a-z'.")
    return "".join(sorted(chars))


def infer_charset(labels: list[str]) -> str:
    return "".join(sorted(set("".join(labels))))


def encode_labels(labels: list[str], charset: str, max_len: int) -> np.ndarray:
    """Encodes strings as int32 rows of class indices (1-based), padded with 0."""
    lookup = {c: i + 1 for i, c in enumerate(charset)}
    out = np.zeros((len(labels), max_len), dtype=np.int32)
    for row, label in enumerate(labels):
        out[row, : len(label)] = [lookup[c] for c in label]
    return out


def decode_indices(indices: np.ndarray, charset: str) -> str:
    """Inverse of `encode_labels` for one row; padding and out-of-range values are dropped."""
    return "".join(charset[i - 1] for i in indices if 0 < i <= len(charset))


def fold_case(text: str) -> str:
    return text.lower()


def both_cases(charset: str) -> str:
    """`charset` with the other case of each of its letters added, sorted."""
    return "".join(sorted(set(charset) | {c.swapcase() for c in charset if c.isalpha() and len(c.swapcase()) == 1}))


def output_columns(source_charset: str, target_charset: str) -> list[int | None]:
    """For each CTC output unit of the target (blank first, then its characters), the source
    unit that reads the same character: the same character, else the other case of it (a site
    with case-folded labels draws both), else None."""
    index = {c: i + 1 for i, c in enumerate(source_charset)}
    columns: list[int | None] = [0]
    for c in target_charset:
        columns.append(index.get(c, index.get(c.swapcase())))
    return columns
