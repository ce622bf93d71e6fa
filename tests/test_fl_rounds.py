"""The server's rounds with the real ServerApp loop and ClientApp handler, in one process: the
federation learns, a round that validates worse is rolled back, compressed updates are decoded
and recorded step by step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedocr.federated.config import FlConfig
from fedocr.federated.node_state import load_node_state
from fedocr.federated.state import ServerState
from fedocr.federated.runs.store import RunStore
from fedocr.model import load_checkpoint
from fl_inprocess import WARM, run_in_process


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds: int, printer: Any = lambda _: None,
         node_configs: list[dict[str, Any]] | None = None, **settings: object) -> tuple[dict, FlConfig]:
    return run_in_process(tmp_path, monkeypatch, rounds, printer, node_configs, **settings)


def _initial_validation() -> tuple[float, float]:
    from fedocr.data.organisations import public_lines
    from fedocr.federated.validate import validate

    start = load_checkpoint(WARM)
    return validate(start.model, start.charset, public_lines("three-orgs-mini", 32, 0, start.charset.version,
                                                             start.charset))


def test_a_few_fedavg_rounds_lower_the_servers_validation_loss_and_cer(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    report, _ = _run(tmp_path, monkeypatch, rounds=3)
    cer0, loss0 = _initial_validation()
    rounds = report["rounds"]
    assert [r["applied"] for r in rounds] == [True, True, True]
    assert rounds[-1]["val_loss"] < loss0 and rounds[-1]["val_cer"] < cer0, (loss0, cer0, rounds[-1])
    assert rounds[-1]["val_loss"] < rounds[0]["val_loss"]
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 0  # the ServerApp publishes the best model


def test_a_failed_onnx_export_is_a_one_line_warning_not_a_failed_run(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import fedocr.export

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("onnxruntime disagrees\nwith PyTorch")

    monkeypatch.setattr(fedocr.export, "export_onnx", broken)
    printed: list[str] = []
    report, cfg = _run(tmp_path, monkeypatch, rounds=1, printer=printed.append)
    assert report["status"] == "finished" and not (cfg.out_path() / "model.onnx").exists()
    assert f"warning: {cfg.out_path() / 'model.onnx'} not written: onnxruntime disagrees" in printed


def test_a_round_that_validates_worse_is_rolled_back_and_the_next_starts_from_the_committed_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Round 2: every client sends a million times its delta; the norm bounds (absolute and adaptive) are
    # lifted so only validation can stop it.
    report, cfg = _run(tmp_path, monkeypatch, rounds=3, **{"rollback.enabled": True, "rollback.tolerance": 0.0,
                                                            "max-update-norm": 1e30, "max-norm-ratio": 0.0,
                                                            "faults": "hospital:huge@2,bank:huge@2,school:huge@2"})
    r1, r2, r3 = report["rounds"]
    assert r1["applied"] and not r2["applied"] and r2["note"].startswith("rolled back: validation CER")
    assert r2["val_cer"] == r1["val_cer"]  # the round's model is the committed one
    gate = [s for s in r2["steps"] if s["step"] == "commit"]
    assert gate and gate[0]["commit"] is False and gate[0]["candidate_cer"] > gate[0]["committed_cer"]
    w1, w2 = (load_checkpoint(tmp_path / "out" / f"round-{n}.pt").model.state_dict() for n in (1, 2))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert r3["applied"] and r3["val_cer"] <= r1["val_cer"] + 0.05


def test_compressed_updates_are_decoded_recorded_and_their_residuals_kept_on_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report, cfg = _run(tmp_path, monkeypatch, rounds=2, **{"compress.top-k": 0.01, "compress.quantize": "int8"})
    for r in report["rounds"]:
        assert r["applied"] and r["accepted"] == 3
        for client in r["clients"]:
            assert client["bytes_up"] * 30 < client["bytes_down"]  # measured on the wire, before decoding
        kept = [s for s in r["steps"] if s["step"] == "top-k"]
        assert {s["client"] for s in kept} == {"hospital", "bank", "school"}
        assert all(s["kept"] <= 0.011 * s["of"] and s["residual_norm"] > 0 for s in kept)
    assert report["rounds"][1]["val_loss"] < report["rounds"][0]["val_loss"] * 1.05
    state = load_node_state(tmp_path / "out" / "node-state" / "bank.npz", report["run_id"])
    assert state["top-k"]["residual"] and all(np.isfinite(v).all() for v in state["top-k"]["residual"].values())
    with RunStore(cfg.store_path()) as store:  # the generic table holds what each step did
        assert {s.step for s in store.rounds(report["run_id"])[0].steps} >= {"top-k", "quantize", "check"}
    saved = ServerState.load(cfg.out_path())
    assert saved is not None and saved.committed_cer == report["rounds"][1]["val_cer"]
    assert json.loads((cfg.out_path() / "report.json").read_text())["rounds"][0]["steps"]


def test_deployment_nodes_evaluate_on_their_own_held_out_lines_and_build_the_final_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fedocr.cli import main
    from fedocr.data import write_line_set
    from fedocr.data.organisations import synthetic_org_data

    start = load_checkpoint(WARM)
    nodes = []
    for partition, name in ((0, "clinic"), (1, "lender")):
        _, lines = synthetic_org_data("three-orgs-mini", partition, "train", 60, 5, start.charset)
        write_line_set(tmp_path / name, lines)
        nodes.append({"data-path": str(tmp_path / name), "name": name, "threads": 1})
    report, cfg = _run(tmp_path, monkeypatch, rounds=2, node_configs=nodes,
                       **{"eval-every": 1, "eval-local-baseline": True})
    for r in report["rounds"]:
        evals = {s["client"]: s for s in r["steps"] if s["step"] == "evaluate"}
        assert set(evals) == {"clinic", "lender"} and all(e["lines"] == 6 for e in evals.values())  # every 10th line
        assert all(0 <= e["cer"] <= 1.5 for e in evals.values())
        assert all(c["examples"] == 54 for c in r["clients"])  # the held-out lines are never trained on
    final = report["final"]
    assert final["source"].startswith("federated evaluation")
    for name in ("clinic", "lender"):
        scores = final["clients"][name]["own_test_cer"]
        last = [s for s in report["rounds"][-1]["steps"] if s["step"] == "evaluate" and s["client"] == name][0]
        assert scores["federated"] == last["cer"] and "local_only" in scores
    assert "local_only_cer" not in [s for s in report["rounds"][0]["steps"] if s["step"] == "evaluate"][0]
    assert main(["fl", "show", report["run_id"], "--store", str(cfg.store_path())]) == 0
    shown = capsys.readouterr().out
    assert "clinic       held-out CER" in shown and "federated evaluation" in shown


def test_a_simulated_federation_with_fewer_supernodes_than_organisations_is_refused_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `flwr run` simulates 2 SuperNodes unless told otherwise: the school must not be left out silently.
    report, _ = _run(tmp_path, monkeypatch, rounds=1, node_configs=[{"partition-id": 0}, {"partition-id": 1}])
    assert report["status"] == "stalled" and report["rounds"] == []
    assert "num-supernodes=3" in report["error"] and "school" in report["error"]


def test_a_run_in_which_no_round_was_applied_ends_failed_and_publishes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[str] = []
    report, cfg = _run(tmp_path, monkeypatch, rounds=1, printer=printed.append, **{
        "lines-per-client": 8, "faults": "hospital:nan@1,bank:nan@1,school:nan@1"})
    assert [r["applied"] for r in report["rounds"]] == [False]
    assert report["status"] == "failed" and "no round was applied in 1 round(s)" in report["error"]
    assert "threshold" in report["error"] and any(line.startswith("run failed: no round") for line in printed)
    assert not (cfg.out_path() / "model.onnx").exists()  # the initial model is not published as the federation's
    with RunStore(cfg.store_path()) as store:
        assert store.run(report["run_id"])["status"] == "failed"
