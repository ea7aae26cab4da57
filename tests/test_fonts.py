"""The generators' fonts: which are installed, and which draw two characters alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from caocrvfy.data import fonts
from caocrvfy.data.charset import DEFAULT_CHARSET_SPEC, parse_charset
from caocrvfy.data.colour_captchas import ColourCaptchaDrawer

CHARSET = parse_charset(DEFAULT_CHARSET_SPEC)


def _font(name: str) -> str:
    found = [p for p in fonts.font_files(CHARSET) if Path(p).name == name]
    assert found, f"{name} is installed with matplotlib or the captcha library"
    return found[0]


def test_a_sans_font_draws_capital_i_as_lower_case_l_and_a_mono_font_does_not():
    assert "Il" in fonts.alike_pairs(_font("DejaVuSans.ttf"), "Il")
    assert fonts.alike_pairs(_font("DroidSansMono.ttf"), CHARSET) == ()


def test_a_letter_and_its_capital_are_not_alike_where_their_sizes_differ():
    bold = fonts.load_font(_font("DejaVuSans-Bold.ttf"), fonts.FONT_SIZE)
    assert fonts.shape_overlap(fonts.ink("x", bold), fonts.ink("X", bold)) > fonts.SAME_SHAPE  # one shape...
    assert fonts.alike_pairs(_font("DejaVuSans-Bold.ttf"), "xX") == ()  # ...at 0.74 of the height


def test_distinct_fonts_leave_out_the_fonts_that_draw_two_characters_alike():
    distinct = fonts.distinct_fonts(CHARSET)
    assert _font("DroidSansMono.ttf") in distinct and _font("DejaVuSans.ttf") not in distinct
    assert set(distinct) < set(fonts.font_files(CHARSET))
    assert not any(fonts.alike_pairs(p, CHARSET) for p in distinct)


def test_where_every_font_draws_two_characters_alike_all_are_kept(monkeypatch):
    only = (_font("DejaVuSans.ttf"),)
    monkeypatch.setattr(fonts, "font_files", lambda charset: only)
    fonts.distinct_fonts.cache_clear()
    try:
        assert fonts.distinct_fonts("Il") == only
    finally:
        fonts.distinct_fonts.cache_clear()


def test_the_colour_key_generator_draws_with_distinct_fonts_only():
    drawer = ColourCaptchaDrawer(CHARSET, "red,blue", 2)
    assert drawer.fonts == fonts.distinct_fonts(CHARSET)


@pytest.mark.parametrize("char", ["I", "l", " "])
def test_ink_is_cut_to_the_glyph(char):
    glyph = fonts.ink(char, fonts.load_font(_font("DejaVuSans.ttf"), fonts.FONT_SIZE))
    assert glyph.ndim == 2 and glyph.shape[0] <= fonts.FONT_SIZE
    assert glyph.any() == (char != " ")
