"""fedocr installed from its wheel (not editable, outside the checkout) finds its shipped model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test_cli import SAMPLE_LINE, reads_the_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "models" / "base.onnx").is_file(), reason="needs the shipped base model")
def test_an_installed_wheel_reads_a_line_with_the_model_it_carries(tmp_path: Path) -> None:
    # Built from a copy, so setuptools' build/ folder is not left in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "src", "models"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        copy(ROOT / part, source / part, **({"symlinks": True} if copy is shutil.copytree else {}))  # type: ignore[operator]
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("fedocr-*.whl")
    # A fresh venv that reuses this environment's dependencies (torch, onnxruntime: no download)
    # through a .pth line, but not its editable fedocr, whose .pth is not processed from there.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FEDOCR_MODEL", "PYTHONPATH")}
    python = str(venv / "bin" / "python")
    where = subprocess.run([python, "-c", "import fedocr, fedocr.model.shipped as s; print(fedocr.__file__); "
                            "print(s.shipped_model())"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    package, model = where.stdout.split()
    assert package.startswith(str(site)) and model.startswith(str(site)) and model.endswith("base.onnx")
    result = subprocess.run([python, "-m", "fedocr", "ocr", str(SAMPLE_LINE)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert reads_the_sample(result.stdout.strip())
