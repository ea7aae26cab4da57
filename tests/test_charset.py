import string

import numpy as np
import pytest

from caocrvfy.data.charset import decode_indices, encode_labels, fold_case, infer_charset, parse_charset


@pytest.mark.parametrize("spec,expected", [
    ("0-9", string.digits),
    ("a-z", string.ascii_lowercase),
    ("0-9a-zA-Z", string.digits + string.ascii_uppercase + string.ascii_lowercase),
    ("A-Z0-9", string.digits + string.ascii_uppercase),
    ("cba", "abc"),
    ("aabbca", "abc"),
    ("0-9135", string.digits),
    ("x0-9+", "+0123456789x"),
])
def test_parse_charset_expands_sorts_and_dedupes(spec, expected):
    assert parse_charset(spec) == expected


def test_parse_charset_is_sorted_and_unique():
    chars = parse_charset("zZ9a-zA-Z0-9!")
    assert list(chars) == sorted(set(chars))
    assert len(chars) == 63


def test_parse_charset_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        parse_charset("")


def test_infer_charset_from_labels():
    assert infer_charset(["ba1", "a2", "b"]) == "12ab"
    assert infer_charset([]) == ""


def test_encode_is_one_based_and_padded_with_zero():
    encoded = encode_labels(["ab", "c", ""], "abc", max_len=3)
    assert encoded.dtype == np.int32
    np.testing.assert_array_equal(encoded, [[1, 2, 0], [3, 0, 0], [0, 0, 0]])


def test_encode_decode_round_trip():
    charset = parse_charset("0-9a-zA-Z")
    labels = ["x7Kq2m", "000", "Zz9", "a"]
    encoded = encode_labels(labels, charset, max_len=6)
    assert [decode_indices(row, charset) for row in encoded] == labels


def test_decode_drops_padding_and_out_of_range_indices():
    assert decode_indices(np.array([0, 1, 0, 3, 4, -1, 2]), "abc") == "acb"


def test_encode_rejects_character_outside_charset():
    with pytest.raises(KeyError):
        encode_labels(["ax"], "abc", max_len=2)


def test_fold_case():
    assert fold_case("AbC1") == "abc1"


def test_any_ascending_range_expands():
    assert parse_charset("A-F") == "ABCDEF"
    assert parse_charset("a-c0-2") == "012abc"


def test_a_dash_outside_a_range_is_a_character():
    assert parse_charset("ab-") == "-ab"
