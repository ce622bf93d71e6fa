"""`fedocr fl simulate` around the run: the ONNX export of the best model and config errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import fedocr.federated.simulate as sim
from fedocr.cli import main
from fedocr.federated.config import FlConfig
from fedocr.federated.orgs import named_charset
from fedocr.model import CRNN, ModelConfig, save_checkpoint
from fedocr.model.checkpoint import provenance

ARGS = ["fl", "simulate", "--preset", "three-orgs-mini", "--rounds", "1", "--initial-model", "scratch"]


def _fake_simulate(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(cfg: FlConfig, **_: Any) -> dict[str, Any]:
        charset = named_charset("mini")
        out = cfg.out_path()
        save_checkpoint(out / "model.pt", CRNN(ModelConfig(len(charset), "tiny")), charset,
                        provenance(kind="federated", run_id="abc", round=1))
        report = {"run_id": "abc", "status": "finished", "final": {}}
        (out / "report.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr(sim, "simulate", fake)


def test_fl_simulate_writes_model_onnx_next_to_model_pt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_simulate(monkeypatch)
    (tmp_path / "o").mkdir()
    assert main([*ARGS, "--out", str(tmp_path / "o"), "--store", str(tmp_path / "runs.db")]) == 0
    assert (tmp_path / "o" / "model.onnx").stat().st_size > 0


def test_a_failed_onnx_export_is_a_one_line_warning_not_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import fedocr.serve.export

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("onnxruntime disagrees\nwith PyTorch")

    _fake_simulate(monkeypatch)
    monkeypatch.setattr(fedocr.serve.export, "export_onnx", broken)
    (tmp_path / "o").mkdir()
    assert main([*ARGS, "--out", str(tmp_path / "o"), "--store", str(tmp_path / "runs.db")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedocr: warning: {tmp_path / 'o' / 'model.onnx'} not written: onnxruntime disagrees"]
    assert not (tmp_path / "o" / "model.onnx").exists()
