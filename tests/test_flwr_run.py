"""`flwr run .` from the repository root, the way the README says (after `source .venv/bin/activate`),
writes the same artefacts as `fedocr fl simulate`; the local SuperLink it leaves is stopped by PID."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from fedocr.cli import main
from fedocr.model import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SUPERLINK_PORT = 39091   # where `flwr run` starts Flower's managed local SuperLink


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _activated_env(home: Path) -> dict[str, str]:
    """The environment `source .venv/bin/activate` gives after scripts/setup.sh."""
    activate = (Path(sys.executable).parent / "activate").read_text()
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in activate  # what setup.sh adds
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "VIRTUAL_ENV": str(Path(sys.executable).parents[1]), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "FLWR_HOME": str(home)}


def _started_by(home: Path) -> list[psutil.Process]:
    """Processes whose FLWR_HOME is this test's (Flower's local SuperLink and what it started)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME") == str(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(_port_taken(LOCAL_SUPERLINK_PORT), reason="a local SuperLink already runs on 127.0.0.1:39091")
def test_flwr_run_dot_writes_the_same_artefacts_and_weights_as_fl_simulate(tmp_path: Path) -> None:
    """Also the seed test: a second Ray run, through the other entry point, gives bit-identical
    weights (Top-K with error feedback and server momentum carry state across rounds)."""
    out, home = tmp_path / "out", tmp_path / "flwr-home"
    settings = {"compress.top-k": "0.1", "server-momentum": "0.5"}
    overrides = (f'federation="three-orgs-mini" num-rounds=2 lines-per-client=32 val-lines=16 test-lines=8 '
                 f'initial-model="scratch" fraction-train=1.0 out-dir="{out}" store="{tmp_path / "runs.db"}" '
                 + " ".join(f"{k}={v}" for k, v in settings.items()))
    try:
        result = subprocess.run(["flwr", "run", ".", "--stream", "--federation-config", "num-supernodes=3",
                                 "--run-config", overrides], cwd=ROOT, env=_activated_env(home), capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    finally:
        left = _started_by(home)
        for proc in left:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=30)
    assert not _started_by(home)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished" and report["config"]["model_resolved"]["size"] == "tiny"
    assert report["config"]["vocabulary_resolved"] == "mini" and "scratch" in report["config"]["initial_model_resolved"]
    assert {c["id"] for c in report["rounds"][0]["clients"]} == {"hospital", "bank", "school"}
    assert set(report["final"]["clients"]) == {"hospital", "bank", "school"}   # the baselines ran in the ServerApp
    for name in ("round-1.pt", "model.pt", "model.onnx", "centralized.pt", "local-only-bank.pt", "server-state.pt"):
        assert (out / name).is_file(), name

    again = tmp_path / "simulated"
    assert main(["fl", "simulate", "--preset", "three-orgs-mini", "--rounds", "2", "--lines", "32", "--val-lines", "16",
                 "--test-lines", "8", "--initial-model", "scratch", "--fraction", "1", "--out", str(again),
                 "--store", str(again / "runs.db"), "--no-baselines",
                 *(arg for k, v in settings.items() for arg in ("--set", f"{k}={v}"))]) == 0
    ran, simulated = (load_checkpoint(folder / "round-2.pt").model.state_dict() for folder in (out, again))
    assert all(torch.equal(ran[k], simulated[k]) for k in ran)
