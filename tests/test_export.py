"""ONNX export: parity with PyTorch on a fixed line set, self-describing files, int8, and the
engine that `fedocr ocr` and the server use (ONNX Runtime, PyTorch as the fallback)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from fedocr.data import SyntheticLines, preprocess
from fedocr.model import load_checkpoint, pad_lines, torch_logits_fn
from fedocr import export as export_mod
from fedocr.serve.engine import load_engine
from fedocr.export import ExportError, Tolerance, compare, export_onnx, ort_logits_fn_from_path
from serve_fixtures import SMALL, random_model


def fixed_lines(charset, n: int = 24):
    """The CI parity set: rendered digits lines, seed fixed, widths from short to long."""
    data = SyntheticLines("digits", n, seed=2024, charset=charset)
    return [preprocess(data[i][0]) for i in range(n)]


@pytest.fixture(scope="module")
def exported(trained_digits_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    return export_onnx(trained_digits_model.path, out, lines=fixed_lines(trained_digits_model.charset))


def test_onnx_runtime_matches_pytorch_on_the_fixed_line_set(trained_digits_model, exported):
    lines = fixed_lines(trained_digits_model.charset)
    report = compare(torch_logits_fn(trained_digits_model.model), ort_logits_fn_from_path(exported.path), lines,
                     trained_digits_model.charset, export_mod.FP32_TOLERANCE)
    assert report.passed
    assert report.max_logprob_diff < 1e-3
    assert report.text_agreement == 1.0
    assert exported.parity.passed


def test_exported_graph_takes_any_batch_size_and_width(exported, trained_digits_model):
    run = ort_logits_fn_from_path(exported.path)
    lines = fixed_lines(trained_digits_model.charset, 5)
    for batch in (lines[:1], lines[:3], lines):
        images, widths = pad_lines(batch)
        logits = run(images, widths)
        assert logits.shape == (len(batch), images.shape[-1] // 4, len(trained_digits_model.charset))


def test_onnx_file_carries_its_charset_config_and_provenance(exported, trained_digits_model):
    meta = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert meta["format"] == "fedocr-onnx/1"
    assert json.loads(meta["charset"])["chars"] == "".join(trained_digits_model.charset.chars)
    assert json.loads(meta["config"])["size"] == "tiny"
    provenance = json.loads(meta["provenance"])
    assert provenance["kind"] == load_checkpoint(trained_digits_model.path).provenance["kind"] == "test asset"
    assert provenance["export"]["parity"]["passed"] is True
    engine = load_engine(exported.path)           # no checkpoint needed next to it
    assert engine.charset == trained_digits_model.charset
    assert engine.info.backend == "onnx"


def test_int8_export_is_verified_and_smaller(tmp_path, exported, trained_digits_model):
    out = tmp_path / "digits.int8.onnx"
    result = export_onnx(trained_digits_model.path, out, int8=True, lines=fixed_lines(trained_digits_model.charset))
    assert result.quantized and result.parity.passed
    assert result.parity.text_agreement >= 0.9
    assert result.bytes < exported.bytes
    assert load_engine(out).info.quantization == "int8"


def test_export_that_fails_verification_writes_nothing(tmp_path, monkeypatch):
    model = random_model(tmp_path / "m.pt")
    monkeypatch.setattr(export_mod, "FP32_TOLERANCE", Tolerance(max_logprob_diff=-1.0, min_text_agreement=1.0))
    with pytest.raises(ExportError, match="does not match"):
        export_onnx(model, tmp_path / "m.onnx", lines=fixed_lines(SMALL, 4))
    assert not (tmp_path / "m.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_engine_prefers_a_sibling_onnx_and_falls_back_to_pytorch(tmp_path):
    model = random_model(tmp_path / "m.pt")
    assert load_engine(model).info.backend == "torch"
    export_onnx(model, tmp_path / "m.onnx", lines=fixed_lines(SMALL, 4))
    assert load_engine(model).info.backend == "onnx"
    assert load_engine(model, prefer_onnx=False).info.backend == "torch"


def test_onnx_and_pytorch_engines_read_a_page_alike(exported, trained_digits_model):
    from serve_fixtures import render_page

    page = render_page(4, seed=21).image
    by_onnx = load_engine(exported.path).ocr(page)
    by_torch = load_engine(trained_digits_model.path, prefer_onnx=False).ocr(page)
    assert by_onnx.text == by_torch.text
    assert [l.box for l in by_onnx.lines] == [l.box for l in by_torch.lines]
    assert np.allclose([l.confidence for l in by_onnx.lines], [l.confidence for l in by_torch.lines], atol=1e-3)


def test_cli_export_then_ocr_with_the_onnx_file(tmp_path, trained_digits_model):
    import cv2

    out = tmp_path / "m.onnx"
    result = subprocess.run([sys.executable, "-m", "fedocr", "export", str(trained_digits_model.path), str(out),
                             "--lines", "6"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "verified on 6 lines" in result.stderr
    image, text = SyntheticLines("digits", 1, seed=77, charset=trained_digits_model.charset)[0]
    cv2.imwrite(str(tmp_path / "line.png"), image)
    result = subprocess.run([sys.executable, "-m", "fedocr", "ocr", "--model", str(out), "--json",
                             str(tmp_path / "line.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert set(obj) == {"image", "text", "confidence", "angle", "warning", "lines"} and obj["angle"] == 0
    assert obj["lines"][0]["box"] == [0, 0, image.shape[1], image.shape[0]]
    reference = load_engine(trained_digits_model.path, prefer_onnx=False).ocr(image).text
    assert obj["text"] == reference


def test_cli_export_of_a_missing_checkpoint_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fedocr", "export", str(tmp_path / "none.pt"),
                             str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert result.stderr.strip().startswith("fedocr: error:") and len(result.stderr.strip().splitlines()) == 1
