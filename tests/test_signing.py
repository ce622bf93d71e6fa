"""Signed models: the federation signs what it writes; `--trust` serves only what verifies."""
from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fedocr.export import export_onnx
from fedocr.model.signature import SignatureError, make_signing_key, sign_file, verify_file
from fedocr.serve.app import ServeConfig, create_app

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import fixed_lines_small, random_model  # noqa: E402


def test_a_signature_verifies_only_for_its_key_and_its_bytes(tmp_path: Path) -> None:
    private, public = make_signing_key(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match="--force"):
        make_signing_key(tmp_path / "keys")
    _, other = make_signing_key(tmp_path / "other")
    model = tmp_path / "m.bin"
    model.write_bytes(b"weights" * 1000)
    with pytest.raises(SignatureError, match="unsigned"):
        verify_file(model, public)
    sign_file(model, private)
    verify_file(model, public)
    with pytest.raises(SignatureError, match="not made by signing.pub"):
        verify_file(model, other)
    model.write_bytes(b"weightz" * 1000)
    with pytest.raises(SignatureError, match="file changed after signing"):
        verify_file(model, public)
    with pytest.raises(SignatureError, match="not a readable public key"):
        verify_file(model, model)


def test_a_server_that_trusts_a_key_serves_and_swaps_to_signed_models_only(tmp_path: Path) -> None:
    private, public = make_signing_key(tmp_path / "keys")
    live = tmp_path / "live.onnx"
    export_onnx(random_model(tmp_path / "a.pt", seed=1), live, lines=fixed_lines_small(4))
    with pytest.raises(Exception, match="unsigned"):
        with TestClient(create_app(ServeConfig(model=live, trust=public))):
            pass
    sign_file(live, private)
    with TestClient(create_app(ServeConfig(model=live, trust=public))) as c:
        served = c.get("/api/health").json()["model"]
        export_onnx(random_model(tmp_path / "b.pt", seed=2), live, lines=fixed_lines_small(4))   # not re-signed
        r = c.post("/api/model/reload", params={"force": "true"})   # force does not skip the signature
        assert r.status_code == 409 and "signature was not made" in r.json()["detail"]
        assert c.get("/api/health").json()["model"] == served
        sign_file(live, private)
        assert c.post("/api/model/reload").status_code == 200


def test_the_cli_refuses_an_unsigned_model_with_one_line(tmp_path: Path) -> None:
    from serve_fixtures import SMALL, png
    from fedocr.data import SyntheticLines

    _, public = make_signing_key(tmp_path / "keys")
    model = tmp_path / "m.onnx"
    export_onnx(random_model(tmp_path / "m.pt"), model, lines=fixed_lines_small(4))
    image = tmp_path / "line.png"
    image.write_bytes(png(SyntheticLines("digits", 1, seed=0, charset=SMALL)[0][0]))
    done = subprocess.run([sys.executable, "-m", "fedocr", "ocr", str(image), "--model", str(model), "--trust",
                           str(public)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unsigned" in done.stderr and "Traceback" not in done.stderr


def test_a_federation_with_a_signing_key_signs_every_model_it_writes(tmp_path: Path, monkeypatch: Any) -> None:
    from fl_inprocess import run_in_process

    private, public = make_signing_key(tmp_path / "keys")
    _, cfg = run_in_process(tmp_path, monkeypatch, 1, **{"sign-key": str(private)})
    out = cfg.out_path()
    for name in ("round-1.pt", "model.pt", "model.onnx"):
        verify_file(out / name, public)
    with pytest.raises(SignatureError, match="not a readable private key"):
        run_in_process(tmp_path / "bad", monkeypatch, 1, **{"sign-key": str(public)})
