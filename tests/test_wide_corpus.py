"""The `wide` corpus: real English words, identifiers, more faces and scales, shaped runs, while
the domain presets keep rendering as they always did."""
from __future__ import annotations

import random
from dataclasses import replace
import re

import cv2
import numpy as np

from fedocr.charset import default_charset
from fedocr.data import SyntheticLines, text_ui, text_wide
from fedocr.data.presets import get_preset
from fedocr.data.fonts import (CORE_NOTO_WEIGHTS, HELD_OUT_WIDE_LATIN_FAMILIES, WIDE_LATIN_FAMILIES, installed_faces,
                               latin_faces)
from fedocr.data.render import CONDENSE, Conditions, render_line


def test_wide_text_is_real_english_in_every_case_with_codes_and_addresses():
    rng = random.Random(7)
    lines = [text_wide.wide_line(rng) for _ in range(600)]
    charset = default_charset()
    assert all(charset.normalise(line) == line for line in lines)       # every character encodable, as written
    words = {w for line in lines for w in re.findall(r"[A-Za-z]{4,}", line)}
    assert {w for w in words if w.isupper()} and {w for w in words if w.istitle()} and {w for w in words if w.islower()}
    vocabulary = set(text_wide._english_vocabulary()[0])
    lowercase = [w for w in words if w.islower()]
    assert sum(w in vocabulary for w in lowercase) > 0.6 * len(lowercase)  # real words, not letter soup
    assert any(re.search(r"[\w.-]+@[\w-]+\.[a-z.]+", line) for line in lines)
    assert any(re.search(r"\d%", line) for line in lines)
    assert any(re.search(r"[\u4e00-\u9fff][：，]?[A-Za-z]", line) for line in lines)  # mixed Chinese and Latin


def test_domain_presets_keep_their_faces_while_wide_adds_weights_and_office_faces():
    core = installed_faces()
    assert all(f.weight in CORE_NOTO_WEIGHTS for f in core if f.family.startswith("Noto "))
    wide = installed_faces(wide=True)
    assert set(core) <= set(wide)
    assert {f.family for f in latin_faces(wide=True)} <= set(WIDE_LATIN_FAMILIES)
    assert not {f.family for f in latin_faces(wide=True)} & set(HELD_OUT_WIDE_LATIN_FAMILIES)
    assert all(not f.path.endswith(".pfb") for f in latin_faces(wide=True))


def test_wide_lines_render_small_large_and_with_the_extra_faces():
    lines = SyntheticLines("wide", 60, seed=11)
    heights = [lines[i][0].shape[0] for i in range(len(lines))]
    assert min(heights) < 26 and max(heights) > 60                    # small print and big type both drawn
    assert all((lines[i][0] < 160).any() for i in range(10))


def test_shaped_runs_lay_out_latin_text_whole_with_kerning():
    face = installed_faces()[0]
    western = next(f for f in latin_faces() if f.family == "Liberation Serif" and "Regular" in f.weight)
    kerned_text = "AVATAR WAVE To Ty 99"
    cond = Conditions(letter_spacing=(0, 0), blur=0, noise=0, jpeg=0)
    per_char = render_line(kerned_text, face, np.random.default_rng(1), cond, western)
    shaped = render_line(kerned_text, face, np.random.default_rng(1), Conditions(
        letter_spacing=(0, 0), shaped_runs=True), western)
    assert shaped.shape[1] < per_char.shape[1]                        # kerning pairs pulled together


def test_small_text_draws_small_glyphs_and_the_default_draws_none():
    face = installed_faces()[0]
    small = [render_line("金额 123", face, np.random.default_rng(s), Conditions(small_text=1.0)).shape[0] for s in range(8)]
    default = [render_line("金额 123", face, np.random.default_rng(s), Conditions()).shape[0] for s in range(8)]
    assert max(small) < min(default)


def test_an_ink_cut_follows_the_ink_so_a_line_without_descenders_loses_the_font_box():
    face = next(f for f in latin_faces() if f.family == "Liberation Serif" and "Regular" in f.weight)
    text_only = Conditions(letter_spacing=(0, 0), rules=0, stamp=0, font_px=(40, 40))

    def ink_rows(line: np.ndarray) -> np.ndarray:
        return np.flatnonzero((line < 128).any(axis=1))

    def ink_share(line: np.ndarray) -> float:  # rows with ink over the image's height
        return len(ink_rows(line)) / line.shape[0]

    boxed = [render_line("seen in ancient versions", face, np.random.default_rng(s), text_only) for s in range(6)]
    cut = [render_line("seen in ancient versions", face, np.random.default_rng(s), replace(text_only, ink_cut=1.0))
           for s in range(6)]
    assert max(map(ink_share, boxed)) <= 0.5                          # ascent + descent + padding around the ink
    assert min(map(ink_share, cut)) > 1 / (1 + 2 * 0.45) > 0.5          # margins at most 0.45x the ink's height
    for line in cut:                                                  # the sides follow the ink too
        cols = np.flatnonzero((line < 128).any(axis=0))
        assert cols[0] <= 0.45 * len(ink_rows(line)) + 1 and line.shape[1] - 1 - cols[-1] <= 0.45 * len(ink_rows(line)) + 1
    # presets that never asked keep their random stream; asking at all costs a draw
    assert draws_after(Conditions()) != draws_after(Conditions(ink_cut=1e-9))


def test_a_condensed_line_is_the_same_line_narrowed_and_presets_that_never_asked_keep_their_stream():
    face = installed_faces()[0]
    plain = Conditions(letter_spacing=(0, 0))
    for seed in range(6):
        drawn = render_line("金额 Invoice 123", face, np.random.default_rng(seed), plain)
        condensed = render_line("金额 Invoice 123", face, np.random.default_rng(seed), replace(plain, condense=1.0))
        assert CONDENSE[0] - 0.01 <= condensed.shape[1] / drawn.shape[1] <= CONDENSE[1] + 0.01
        assert np.array_equal(condensed, cv2.resize(drawn, condensed.shape[::-1], interpolation=cv2.INTER_AREA))
    # presets that never asked keep their random stream; asking at all (however rarely) costs a draw
    assert draws_after(plain) != draws_after(replace(plain, condense=1e-9))


def test_a_cell_underlines_through_the_descenders_or_boxes_the_line_and_leaves_paper_at_the_edges():
    face = next(f for f in latin_faces() if f.family == "Liberation Serif" and "Regular" in f.weight)
    plain = Conditions(letter_spacing=(0, 0), rules=0, stamp=0, font_px=(40, 40))
    underlined = boxed = 0
    for seed in range(16):
        drawn = render_line("typography", face, np.random.default_rng(seed), plain)
        cell = render_line("typography", face, np.random.default_rng(seed), replace(plain, cell_rules=1.0))
        cut = render_line("typography", face, np.random.default_rng(seed), replace(plain, cell_rules=1.0, ink_cut=1.0))
        for line in (cell, cut):                                      # the paper's tone is still read at the edges
            assert np.median(np.concatenate([line[0], line[-1]])) > 200
        if cell.shape == drawn.shape:                                 # an underline only: through the descenders
            added = (cell < 128) & ~(drawn < 128)
            rows = np.flatnonzero(added.sum(axis=1) > 0.6 * drawn.shape[1])
            ink = np.flatnonzero((drawn < 128).any(axis=1))
            assert rows.size and all(ink[0] + 0.5 * (ink[-1] - ink[0]) < r <= ink[-1] for r in rows)
            underlined += 1
        else:                                                         # a box: long rules near all four edges but one
            dark = cell < 128
            h, w = cell.shape
            near = [dark[1:6].sum(axis=1).max() > 0.9 * w, dark[-6:-1].sum(axis=1).max() > 0.9 * w,
                    dark[:, 1:6].sum(axis=0).max() > 0.9 * h, dark[:, -6:-1].sum(axis=0).max() > 0.9 * h]
            assert sum(near) >= 3 and h > drawn.shape[0] and w > drawn.shape[1]
            boxed += 1
    assert underlined and boxed                                       # both kinds are drawn
    assert draws_after(plain) != draws_after(replace(plain, cell_rules=1e-9))


def draws_after(cond: Conditions) -> float:
    """The random stream's next number after drawing one line: equal for two conditions only if
    they drew the same numbers."""
    rng = np.random.default_rng(3)
    render_line("金额", installed_faces()[0], rng, cond)
    return float(rng.random())


def test_plain_text_markup_draws_runs_of_one_mark_bullets_and_blanks():
    rng = random.Random(5)
    lines = [text_wide.plain_text_markup(rng) for _ in range(300)]
    assert default_charset().normalise("".join(lines)) == "".join(lines)
    assert any(re.search(r"={8,}", line) for line in lines) and any(re.search(r"_{4,}$", line) for line in lines)
    assert any(line.startswith("* ") for line in lines) and any(re.match(r"\[[^\]]+\] ", line) for line in lines)
    names = [text_wide.identifier(rng) for _ in range(100)]
    assert any(re.fullmatch(r"[a-z']+(_[a-z']+)+", n) for n in names) and any(n.startswith("--") for n in names)


def test_ui_text_puts_latin_keys_options_and_placeholders_in_brackets_inside_chinese():
    rng = random.Random(3)
    lines = [text_ui.ui_line(rng) for _ in range(1000)]
    assert default_charset().normalise("".join(lines)) == "".join(lines)   # every character encodable, as written
    assert all(0 < len(line) <= text_ui.MAX_CHARS and line == line.strip() and "  " not in line for line in lines)
    hanzi = r"[\u4e00-\u9fff]"
    assert any(re.search(hanzi + r"（[A-Za-z][^）]*）", line) for line in lines)     # 斜体（Italic）
    assert any(re.search(hanzi + r"\([A-Z]\)", line) for line in lines)             # 保存(S): an accelerator key
    assert any(re.search(hanzi + r" --[a-z]", line) for line in lines)              # an option inside Chinese
    assert any(re.search(r"[a-z] \[[^\]]+\]", line) for line in lines)              # English with a [bracket]
    assert any(re.search(r"%[sd]|\{\w*\}", line) for line in lines)                 # printf and format placeholders
    for opening, closing, _ in text_ui.BRACKETS:
        if opening != closing:
            assert all(line.count(opening) == line.count(closing) for line in lines), opening
    english_only = [line for line in lines if not re.search(hanzi, line)]
    assert english_only and not any(re.search("[（）【】《》“”]", line) for line in english_only)
    menus = [text_ui.menu_label(rng) for _ in range(200)]
    assert all(re.fullmatch(r"([\u4e00-\u9fff]+[(（][A-Z0-9][)）][、， ]?)+(\.\.\.|…)?", m) for m in menus)
    # A translator spaces Latin runs inside Chinese consistently: one gap per line, a space more often than not.
    spaced = [line for line in lines if re.search(hanzi + r" [A-Za-z]", line)]
    tight = [line for line in lines if re.search(hanzi + r"[A-Za-z]", line)]
    assert len(spaced) > 1.2 * len(tight) > 0
    assert [text_ui.ui_line(random.Random(9)) for _ in range(3)] == [text_ui.ui_line(random.Random(9))] * 3


def test_the_ui_preset_is_drawn_as_the_wide_one_whose_drawing_is_pinned():
    ui, wide = get_preset("ui"), get_preset("wide")
    assert wide.styles == {"sans": 0.45, "serif": 0.4, "kai": 0.15} and wide.faces == "wide"
    assert wide.conditions == Conditions(low_contrast=0.15, stamp=0.04, blur=0.35, motion_blur=0.05, noise=0.35,
                                         jpeg=0.45, uneven_light=0.15, perspective=0.15, rules=0.25, stains=0.04,
                                         latin_font=0.7, small_text=0.3, large_text=0.1, aliased=0.1,
                                         shaped_runs=True, ink_cut=0.5, cell_rules=0.2)
    assert (ui.styles, ui.conditions, ui.faces) == (wide.styles, wide.conditions, wide.faces)
    lines = SyntheticLines("ui", 12, seed=4)
    assert sum(bool(re.search(r"[(（\[]", line)) for line in lines.texts()) >= 6
