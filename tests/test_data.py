import os
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from fedocr.data import (DatasetError, EncodedLines, LabelFileDataset, LmdbDataset, SyntheticLines, get_preset,
                         open_dataset, preprocess, write_line_set)
from fedocr.data.presets import PRESETS, UnknownPreset


def _write_png(path, text_like=True, size=(120, 40)):
    image = np.full(size[::-1], 240, np.uint8)
    if text_like:
        image[12:28, 10:100:8] = 20
    Image.fromarray(image).save(path)


def test_preprocess_normalises_height_width_and_polarity():
    line = np.full((50, 203), 250, np.uint8)
    line[15:35, 20:180] = 10
    out = preprocess(line)
    assert out.shape[0] == 32 and out.shape[1] % 4 == 0 and out.dtype == np.float32
    assert out.max() <= 1 and out.min() >= 0
    assert out[:, :4].mean() < 0.05 and out[12:20, 30:100].mean() > 0.9    # background 0, ink ~1
    inverted = preprocess(255 - line)                                      # light text on dark paper
    assert np.abs(inverted - out).mean() < 0.02


def test_preprocess_restores_low_contrast_scans():
    line = np.full((40, 160), 180, np.uint8)
    line[12:28, 10:150] = 150                                              # faint grey ink
    out = preprocess(line)
    assert out[11:21, 12:115].mean() > 0.8 and out[:3].mean() < 0.1       # 40x160 -> 32x128


def test_flat_scans_preprocess_alike_on_many_threads_at_once():
    # The engine preprocesses a page's lines on two threads; local equalisation (CLAHE) once
    # shared one OpenCV object between them, which raised assertion errors or mixed results.
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    flat = [(150 + rng.integers(0, 40, (int(rng.integers(20, 80)), int(rng.integers(60, 900))))).astype(np.uint8)
            for _ in range(200)]
    alone = [preprocess(line) for line in flat]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert all(np.array_equal(a, b) for a, b in zip(alone, pool.map(preprocess, flat)))


def test_preprocess_accepts_rgb_rgba_and_16_bit():
    gray = np.full((32, 64), 255, np.uint8)
    gray[8:24, 8:56] = 0
    base = preprocess(gray)
    for variant in (np.stack([gray] * 3, -1), np.dstack([gray] * 3 + [np.full_like(gray, 255)]), gray.astype(np.uint16) * 257):
        assert np.abs(preprocess(variant) - base).max() < 0.02


def test_renderer_is_deterministic_under_a_seed_and_varies_across_seeds():
    a, b, c = (SyntheticLines("bank", 3, seed=s) for s in (4, 4, 5))
    for i in range(3):
        assert a[i][1] == b[i][1] and np.array_equal(a[i][0], b[i][0])
    assert [a[i][1] for i in range(3)] != [c[i][1] for i in range(3)]


def test_every_preset_renders_real_glyphs_with_its_own_text():
    texts = {}
    for name in PRESETS:
        data = SyntheticLines(name, 20, seed=0)
        image, text = data[0]
        assert image.dtype == np.uint8 and image.ndim == 2 and image.shape[0] >= 16
        assert image.min() < 150 < image.max()                             # ink on paper
        texts[name] = {data.text(i) for i in range(20)}
    assert any("金额" in t or "账号" in t or "合同" in t or "大写" in t for t in texts["bank"])
    assert any("运单号" in t or "地址" in t or "电话" in t or "收件人" in t or "重量" in t for t in texts["logistics"])
    assert texts["hospital"].isdisjoint(texts["school"])


def test_held_out_fonts_are_never_used_for_training_presets():
    from fedocr.data.fonts import HELD_OUT_FAMILIES, installed_faces
    assert not {f.family for f in installed_faces()} & set(HELD_OUT_FAMILIES)
    held = SyntheticLines("public", 2, seed=0, held_out_fonts=True)
    assert held.name.endswith("heldout-font") and held[0][0].size


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(UnknownPreset, match="unknown preset 'pharmacy'"):
        get_preset("pharmacy")


def test_folder_with_labels_tsv_round_trips_through_the_writer(tmp_path):
    source = SyntheticLines("logistics", 5, seed=3)
    write_line_set(tmp_path / "set", (source[i] for i in range(5)))
    data = open_dataset(tmp_path / "set")
    assert isinstance(data, LabelFileDataset) and len(data) == 5
    assert [data[i][1] for i in range(5)] == [source[i][1] for i in range(5)]
    assert np.array_equal(data[2][0], source[2][0])                        # PNG is lossless


def test_writer_leaves_nothing_behind_when_it_fails(tmp_path):
    def lines():
        yield np.full((32, 64), 255, np.uint8), "ok"
        raise RuntimeError("renderer crashed")
    with pytest.raises(RuntimeError):
        write_line_set(tmp_path / "out", lines())
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_mix_into_a_non_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists"):
        write_line_set(tmp_path / "out", [(np.full((32, 64), 255, np.uint8), "x")])
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_paddleocr_style_label_file_with_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    _write_png(tmp_path / "imgs" / "a.jpg")
    _write_png(tmp_path / "imgs" / "b.png")
    (tmp_path / "rec_gt_train.txt").write_text("imgs/a.jpg\t发票号码\nimgs/b.png\tTotal 12.50\n", encoding="utf-8")
    data = open_dataset(tmp_path / "rec_gt_train.txt")
    assert len(data) == 2 and data[0][1] == "发票号码" and data[1][1] == "Total 12.50"
    assert data[0][0].ndim == 2


def test_lmdb_in_the_original_crnn_layout(tmp_path):
    import cv2
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, text in enumerate(["银行", "2024"], start=1):
            ok, buf = cv2.imencode(".png", np.full((32, 80), 200 + i, np.uint8))
            txn.put(b"image-%09d" % i, buf.tobytes())
            txn.put(b"label-%09d" % i, text.encode())
        txn.put(b"num-samples", b"2")
    env.close()
    data = open_dataset(tmp_path / "db")
    assert isinstance(data, LmdbDataset) and len(data) == 2
    assert data[0][1] == "银行" and data[1][1] == "2024" and data[1][0].shape == (32, 80)


@pytest.mark.parametrize("content, message", [
    ("", "no labelled lines"),
    ("\n\n", "no labelled lines"),
    ("images/a.png 金额\n", ":1: expected 'image-path<TAB>text'"),
    ("images/missing.png\t金额\n", "1 image(s) missing"),
])
def test_bad_labels_files_name_the_problem(tmp_path, content, message):
    (tmp_path / "labels.tsv").write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_dataset(tmp_path)


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_text("this is text")
    (tmp_path / "labels.tsv").write_text("images/a.png\t金额\n", encoding="utf-8")
    data = open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="a.png: not a readable image"):
        data[0]


def test_lines_with_unknown_characters_are_skipped_and_counted(tmp_path, small_charset):
    for name in ("a", "b", "c"):
        _write_png(tmp_path / f"{name}.png")
    (tmp_path / "labels.tsv").write_text("a.png\t123\nb.png\t12x\nc.png\t\n", encoding="utf-8")
    encoded = EncodedLines(open_dataset(tmp_path), small_charset)
    assert len(encoded) == 1 and encoded.skipped == 2 and encoded.empty == 1
    assert "x" in encoded.unknown.summary()


def test_dark_ink_on_dim_grey_paper_is_not_inverted():
    line = np.full((40, 160), 90, np.uint8)          # a dim photo: paper at 90, ink at 25
    line[12:28, 10:150] = 25
    out = preprocess(line)
    assert out[11:21, 12:115].mean() > 0.8 and out[:3].mean() < 0.1


def test_text_on_a_transparent_png_is_read_as_dark_on_white(tmp_path):
    rgba = np.zeros((32, 96, 4), np.uint8)           # black everywhere, opaque only where the ink is
    rgba[8:24, 8:88, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    from fedocr.data import read_image
    gray = read_image(tmp_path / "t.png")
    assert gray[0, 0] == 255 and gray[16, 40] == 0


def test_labels_may_hold_unicode_line_separators_but_not_tabs(tmp_path):
    image = np.full((32, 64), 255, np.uint8)
    write_line_set(tmp_path / "ok", [(image, "第一\u2028段\x1c落")])
    assert open_dataset(tmp_path / "ok")[0][1] == "第一\u2028段\x1c落"
    with pytest.raises(DatasetError, match="tab or a line break"):
        write_line_set(tmp_path / "bad", [(image, "a\tb")])
    assert not (tmp_path / "bad").exists()


def test_packed_font_folder_replaces_fontconfig(tmp_path, monkeypatch):
    from fedocr.charset import default_charset
    from fedocr.data import fonts

    smallest = min(fonts.installed_faces(), key=lambda f: os.path.getsize(f.path))
    charset = default_charset()
    [packed] = fonts.pack_faces(tmp_path / "fonts", charset, faces=(smallest,))
    assert packed.stat().st_size < os.path.getsize(smallest.path)
    monkeypatch.setenv(fonts.FONT_DIR_ENV, str(tmp_path / "fonts"))
    monkeypatch.setenv("FEDOCR_CACHE", str(tmp_path / "cache"))
    fonts.installed_faces.cache_clear()
    fonts.latin_faces.cache_clear()
    try:
        [face] = fonts.installed_faces()
        assert face.path == str(packed) and face.family == smallest.family
        assert fonts.coverage(face, charset) == fonts.coverage(smallest, charset)
        image, text = SyntheticLines("public", 1, seed=3)[0]
        assert text and (image < 128).any()
        (tmp_path / "fonts" / fonts.MANIFEST).write_text("[{}]", encoding="utf-8")
        fonts.installed_faces.cache_clear()
        with pytest.raises(fonts.FontsMissing, match="manifest"):
            fonts.installed_faces()
    finally:
        fonts.installed_faces.cache_clear()
        fonts.latin_faces.cache_clear()


PACK_FONTS = Path(__file__).resolve().parents[1] / "scripts" / "pack_fonts.py"


def test_pack_fonts_packs_the_wide_training_faces_less_those_left_out():
    import runpy

    from fedocr.data import fonts

    faces_to_pack = runpy.run_path(str(PACK_FONTS))["faces_to_pack"]
    wide = faces_to_pack(True, set())
    assert {f.family for f in wide} >= {"Noto Sans CJK SC", "Nimbus Roman", "Carlito"}
    assert not {f.family for f in wide} & (set(fonts.HELD_OUT_FAMILIES) | set(fonts.HELD_OUT_WIDE_LATIN_FAMILIES))
    fewer = faces_to_pack(True, {"Noto Sans CJK SC Thin", "Carlito Bold"})
    assert [f for f in wide if f.name not in {"Noto Sans CJK SC Thin", "Carlito Bold"}] == list(fewer) != list(wide)
    assert faces_to_pack(False, set()) == fonts.every_face()  # the default set, held-out faces included
    assert {f.family for f in fonts.every_face()} & set(fonts.HELD_OUT_FAMILIES)


def test_pack_fonts_refuses_a_face_name_it_does_not_know_and_writes_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(PACK_FONTS), "--wide", "--leave-out", "Noto Sans CJK SC Bold,No Such Face",
                             str(tmp_path / "fonts")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "pack_fonts: --leave-out names no packed face: No Such Face"
    assert not (tmp_path / "fonts").exists()


def test_ascii_runs_can_be_drawn_with_a_western_font_on_the_same_baseline():
    import numpy as np

    from fedocr.data.fonts import HELD_OUT_LATIN_FAMILIES, LATIN_FAMILIES, installed_faces, latin_faces
    from fedocr.data.render import Conditions, render_line

    face, latin = installed_faces()[0], latin_faces()[0]
    assert {f.family for f in latin_faces()} <= set(LATIN_FAMILIES)
    assert {f.family for f in latin_faces(held_out=True)} <= set(HELD_OUT_LATIN_FAMILIES)
    cond = Conditions(letter_spacing=(0, 0))
    plain = render_line("金额 Total 123", face, np.random.default_rng(1), cond)
    mixed = render_line("金额 Total 123", face, np.random.default_rng(1), cond, latin=latin)
    chinese_only = render_line("金额", face, np.random.default_rng(1), cond, latin=latin)
    assert (mixed < 128).any() and plain.shape[0] <= mixed.shape[0] + 4
    assert plain.shape != mixed.shape or (plain != mixed).any()       # the Latin glyphs changed
    same = render_line("金额", face, np.random.default_rng(1), cond)
    assert np.array_equal(chinese_only, same)                          # no ASCII: the CJK face alone
    for western in latin_faces():                                      # ASCII only: the Western face fills the canvas
        line = render_line("JK2015-812088", face, np.random.default_rng(2), Conditions(letter_spacing=(0, 0)), western)
        inked = np.flatnonzero((line < 128).any(axis=0))
        assert line.shape[1] - inked[-1] < 0.6 * line.shape[0], (western.name, line.shape, inked[-1])


def test_a_renderer_change_changes_the_data_fingerprint(small_charset, monkeypatch):
    now = EncodedLines(SyntheticLines("digits", 8, seed=1, charset=small_charset), small_charset).fingerprint
    monkeypatch.setattr(SyntheticLines, "render_version", "1")
    before = EncodedLines(SyntheticLines("digits", 8, seed=1, charset=small_charset), small_charset).fingerprint
    assert now != before and now.split(":")[0] == before.split(":")[0]


def test_a_loosely_cut_line_is_trimmed_to_the_scale_of_a_tight_one_and_flat_marks_are_not_blown_up():
    import numpy as np

    from fedocr.data.fonts import installed_faces
    from fedocr.data.preprocess import preprocess
    from fedocr.data.render import Conditions, render_line

    cond = Conditions(letter_spacing=(0, 0), font_px=(30, 30))
    tight = render_line("Initial delay 延迟", installed_faces()[0], np.random.default_rng(0), cond)
    loose = np.full((tight.shape[0] * 3, tight.shape[1]), 255, np.uint8)
    loose[tight.shape[0]:2 * tight.shape[0]] = tight                  # a PDF line box or table cell around it
    assert abs(preprocess(loose).shape[1] - preprocess(tight).shape[1]) <= 0.15 * preprocess(tight).shape[1]
    dashes = np.full((60, 300), 255, np.uint8)
    dashes[29:31, 20:280:12] = 0                                      # a dotted rule: two rows of ink
    ink_rows = (preprocess(dashes) > 0.5).any(axis=1).sum()
    assert ink_rows <= 8                                              # not a bar across the whole height
