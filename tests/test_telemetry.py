"""ONNX Runtime's telemetry store stays unwritten: OCR in a fresh HOME leaves no
~/.cache/Microsoft/DeveloperTools/.onnxruntime (device id, process and model names)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedocr.export import export_onnx
from serve_fixtures import random_model

OCR = """
import sys, numpy as np
from fedocr.serve.engine import load_engine
page = np.full((40, 200), 255, np.uint8); page[12:28, 20:180:6] = 0
print(load_engine(sys.argv[1]).ocr(page).text)
"""
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "base.onnx"
STORE = Path(".cache") / "Microsoft" / "DeveloperTools" / ".onnxruntime"


def run_in_fresh_home(home: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """The shipped model when there is one (no export to wait for), else a random tiny one."""
    if SHIPPED.is_file():
        return SHIPPED
    out = tmp_path_factory.mktemp("telemetry")
    few_lines = [np.zeros((32, 64), np.float32), np.ones((32, 24), np.float32)]   # a random model: speed only
    return export_onnx(random_model(out / "m.pt"), out / "m.onnx", lines=few_lines).path


def test_ocr_in_a_fresh_home_writes_no_telemetry(tmp_path, onnx_model):
    home = tmp_path / "home"
    home.mkdir()
    result = run_in_fresh_home(home, OCR, str(onnx_model))
    assert result.returncode == 0, result.stderr
    assert not (home / ".cache").exists(), sorted(str(p.relative_to(home)) for p in home.rglob("*"))


def test_the_probe_would_see_the_store(tmp_path):
    """Without fedocr's switch, importing onnxruntime alone writes the store (onnxruntime 1.32),
    so the test above would catch a regression."""
    home = tmp_path / "home"
    home.mkdir()
    result = run_in_fresh_home(home, "import onnxruntime")
    assert result.returncode == 0, result.stderr
    if not (home / STORE).exists():
        pytest.skip("this onnxruntime writes no telemetry store at import")
    assert any((home / STORE).iterdir())
