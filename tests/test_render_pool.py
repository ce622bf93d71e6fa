"""scripts/make_render_pool.py: training lines drawn by another renderer (headless Chromium here;
LibreOffice is not installed on CI machines), from our training texts, never a check set's."""
import dataclasses
import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedocr.data import open_dataset, write_line_set

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_render_pool.py"


@pytest.fixture(scope="module")
def pool_script():
    spec = importlib.util.spec_from_file_location("make_render_pool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_pool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_long_lines_are_set_smaller_so_they_never_wrap_or_run_off_the_page(pool_script):
    office, browser = pool_script.office, pool_script.browser
    long_text, short_text = "汉" * 80, "短行"
    for fit, specs, size, biggest in ((pool_script.fit_office, office.office_specs, "size_pt", max(office.SIZES_PT)),
                                      (pool_script.fit_browser, browser.browser_specs, "size", max(browser.SIZES))):
        for text, fits in ((long_text, False), (short_text, True)):
            (spec,) = specs([("wide", text)], random.Random(0))
            spec = dataclasses.replace(spec, **{size: biggest})
            assert (getattr(fit(spec), size) == biggest) is fits


def test_texts_of_the_external_check_sets_are_never_drawn(pool_script, tmp_path, monkeypatch):
    first = pool_script.training_texts(6, seed=4)
    assert {corpus for corpus, _ in first} == set(pool_script.PRESETS)
    check_set = tmp_path / "check"
    write_line_set(check_set, [(np.full((8, 8), 255, np.uint8), first[0][1])])
    monkeypatch.setattr(pool_script, "external_set_dirs", lambda: [check_set])
    again = [text for _, text in pool_script.training_texts(6, seed=4)]
    assert first[0][1] not in again and len(again) == 6
    assert [text for _, text in first[1:]] == again[:5]


def test_a_browser_drawn_pool_is_a_line_set_training_can_read(tmp_path):
    out = tmp_path / "pool"
    result = make_pool("--out", str(out), "--n", "6", "--seed", "2", "--renderers", "browser")
    assert result.returncode == 0, result.stderr
    lines = open_dataset(out)
    meta = (out / "meta.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 and len(meta) == 7 and all(row.split("\t")[1] == "browser" for row in meta[1:])
    for image, text in (lines[i] for i in range(len(lines))):
        assert text and image.ndim == 2 and image.shape[0] >= 8
        assert image.min() < 128 < image.max()  # ink on paper, not a blank or clipped crop


def test_bad_requests_fail_with_one_line_and_write_nothing(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    result = make_pool("--out", str(taken), "--n", "2")
    assert result.returncode != 0 and "already exists" in result.stderr.strip().splitlines()[-1]
    result = make_pool("--out", str(tmp_path / "new"), "--renderers", "pango")
    assert result.returncode != 0 and "--renderers" in result.stderr
    assert not (tmp_path / "new").exists() and list(taken.iterdir()) == []
