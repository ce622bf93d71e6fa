"""scripts/make_render_pool.py: training lines drawn by other renderers (headless Chromium, and
LibreOffice where it is installed: scripts/setup.sh does not install it), from our training texts,
never a check set's, each label exactly what its image shows."""
import dataclasses
import importlib.util
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedocr.data import open_dataset, write_line_set

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_render_pool.py"
needs_chromium = pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed")
needs_libreoffice = pytest.mark.skipif(not (shutil.which("soffice") and shutil.which("pdftoppm")),
                                       reason="LibreOffice / poppler-utils are not installed")


@pytest.fixture(scope="module")
def pool_script():
    spec = importlib.util.spec_from_file_location("make_render_pool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_pool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_long_lines_are_set_smaller_and_lines_that_fit_nowhere_are_not_set(pool_script):
    office, browser = pool_script.office, pool_script.browser
    for fit, specs, size, biggest in ((pool_script.fit_office, office.office_specs, "size_pt", max(office.SIZES_PT)),
                                      (pool_script.fit_browser, browser.browser_specs, "size", max(browser.SIZES))):
        for text, fits in (("汉" * 80, False), ("短行", True)):
            (spec,) = specs([("wide", text)], random.Random(0))
            spec = dataclasses.replace(spec, **{size: biggest})
            assert (getattr(fit(spec), size) == biggest) is fits
        (endless,) = specs([("wide", "汉" * 400)], random.Random(0))
        assert fit(endless) is None


def test_a_browser_line_set_smaller_is_kept_as_captured_not_zoomed_for_its_old_size(pool_script):
    (spec,) = pool_script.browser.browser_specs([("wide", "汉" * 80)], random.Random(0))
    fitted = pool_script.fit_browser(dataclasses.replace(spec, size=40, zoom=0.5, interpolation="area"))
    assert fitted.size < 40 and fitted.zoom == 1.0


def test_a_screenshot_whose_ink_runs_off_the_window_is_dropped(pool_script):
    (spec,) = pool_script.browser.browser_specs([("en_ui", "Open file")], random.Random(0))
    strip = np.full((40, 300), 255, np.uint8)
    strip[10:30, 20:200] = 0
    assert pool_script.browser.cut(strip, spec, random.Random(0)) is not None
    strip[10:30, 200:] = 0  # the text continues past the right edge: its label would be wrong
    assert pool_script.browser.cut(strip, spec, random.Random(0)) is None


def test_texts_of_the_external_check_sets_are_never_drawn(pool_script, tmp_path, monkeypatch):
    first = pool_script.training_texts(6, seed=4)
    assert {corpus for corpus, _ in first} == set(pool_script.PRESETS)
    check_set = tmp_path / "check"
    write_line_set(check_set, [(np.full((8, 8), 255, np.uint8), first[0][1])])
    monkeypatch.setattr(pool_script, "external_set_dirs", lambda: [check_set])
    again = [text for _, text in pool_script.training_texts(6, seed=4)]
    assert first[0][1] not in again and len(again) == 6
    assert [text for _, text in first[1:]] == again[:5]


def test_every_text_is_set_once(pool_script):
    texts = [text for _, text in pool_script.training_texts(3000, seed=1)]
    assert len(texts) == 3000 == len(set(texts))


def test_the_font_families_kept_out_for_checking_never_draw_a_training_line(pool_script):
    families = pool_script.OFFICE_WESTERN + pool_script.OFFICE_CJK + pool_script.BROWSER_LATIN
    families += [f for f, _ in pool_script.BROWSER_CJK]
    assert {"LXGW WenKai", "FreeSans", "FreeSerif"} <= set(pool_script.office.CJK_FACES + pool_script.office.LATIN_FACES)
    assert not pool_script.HELD_OUT & set(families) and "LXGW WenKai" in pool_script.HELD_OUT
    assert {"FreeSans", "P052"} <= pool_script.HELD_OUT and "Noto Sans CJK SC" in families


def check_pool(out: Path, renderer: str, texts: int) -> None:
    """A line set training can read, most texts kept, meta.tsv row for row, ink on every image."""
    lines = open_dataset(out)
    meta = (out / "meta.tsv").read_text(encoding="utf-8").splitlines()
    assert texts - 1 <= len(lines) <= texts and len(meta) == len(lines) + 1
    rows = [row.split("\t") for row in meta[1:]]
    assert all(row[1] == renderer for row in rows)
    assert not {face for row in rows for face in row[3].split("|")} & {"LXGW WenKai", "FreeSans", "FreeSerif"}
    for image, text in (lines[i] for i in range(len(lines))):
        assert text and image.ndim == 2 and image.shape[0] >= 8
        assert image.min() < 128 < image.max()  # ink on paper, not a blank crop
    assert not list(out.parent.glob(".*staging*"))


@needs_chromium
def test_a_browser_drawn_pool_is_a_line_set_training_can_read(tmp_path):
    result = make_pool("--out", str(tmp_path / "pool"), "--n", "6", "--seed", "2", "--renderers", "browser")
    assert result.returncode == 0, result.stderr
    check_pool(tmp_path / "pool", "browser", 6)


@needs_libreoffice
def test_an_office_drawn_pool_is_a_line_set_training_can_read(tmp_path):
    result = make_pool("--out", str(tmp_path / "pool"), "--n", "6", "--seed", "2", "--renderers", "office")
    assert result.returncode == 0, result.stderr
    check_pool(tmp_path / "pool", "office", 6)


def test_bad_requests_fail_with_one_line_and_write_nothing(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    result = make_pool("--out", str(taken), "--n", "2")
    assert result.returncode != 0 and "already exists" in result.stderr.strip().splitlines()[-1]
    result = make_pool("--out", str(tmp_path / "new"), "--renderers", "pango")
    assert result.returncode != 0 and "--renderers" in result.stderr
    assert not (tmp_path / "new").exists() and list(taken.iterdir()) == []
