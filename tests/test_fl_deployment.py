"""Flower's deployment engine on 127.0.0.1: a SuperLink with TLS and SuperNode authentication,
three authorised SuperNodes with their own data folders, one with an unregistered key and one
without TLS, and two runs on them. Every process is stopped by PID in the teardown, even when the test fails."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedocr.data import SyntheticLines, write_line_set
from fedocr.federated.deploy.certs import make_bundle
from fedocr.federated.config import FlConfig
from fedocr.data.organisations import MINI_PRESETS, named_charset, public_lines
from fedocr.federated.validate import validation_loss
from fedocr.federated.vocab import initial_model
from fedocr.model import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from fl_fixtures import Deployment  # noqa: E402

ORGS = ("hospital", "bank", "school")


@pytest.fixture
def deployment(tmp_path: Path):  # type: ignore[no-untyped-def]
    make_bundle(tmp_path / "certs", ["127.0.0.1", "localhost"], [*ORGS, "rogue"])
    charset = named_charset("mini")
    for i, org in enumerate(ORGS):
        lines = SyntheticLines(MINI_PRESETS[org], 48, seed=50 + i, charset=charset)
        write_line_set(tmp_path / "data" / org, (lines[j] for j in range(len(lines))))
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(tmp_path / "flwr")}
    dep = Deployment(tmp_path, tmp_path / "certs", env)
    try:
        yield dep
    finally:
        dep.stop()
        assert dep.alive() == [], f"still running after teardown: {dep.alive()}"


def start_three_organisations(dep: Deployment) -> dict[str, tuple[str, subprocess.Popen]]:
    """The SuperLink, then each organisation's key registered under its name and its SuperNode
    started: the hospital and the bank without a name of their own (the run must learn theirs from
    the registration), the school with its own (the fault drills find a node by the name it knows).
    Returns each organisation's node id and SuperNode process."""
    root = dep.root
    dep.start_superlink()
    dep.write_connection()
    node_ids = {}
    for org in ORGS:
        result = dep.flwr("supernode", "register", str(root / "certs" / "nodes" / f"{org}.pub"), "fedocr",
                          "--name", org, "--format", "json")
        assert result.returncode == 0, result.stdout + result.stderr
        node_ids[org] = str(json.loads(result.stdout)["node-id"])
    return {org: (node_ids[org], dep.start_supernode(org, root / "certs" / "nodes" / org, root / "data" / org,
                                                     own_name=org == "school")) for org in ORGS}


def run(dep: Deployment, out: Path, settings: str) -> tuple[subprocess.CompletedProcess, dict]:
    """One `flwr run` of the App on the three organisations; its report.json."""
    run_config = (f'federation="three-orgs-mini" charset="mini" initial-model="scratch" val-lines=24 '
                  f'fraction-train=1.0 min-accepted=2 round-deadline-s=240 {settings} '
                  f'out-dir="{out}" store="{dep.root / "runs.db"}"')
    result = dep.flwr("run", str(Path(__file__).resolve().parents[1]), "fedocr", "--run-config", run_config,
                      "--stream", timeout=480)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_deployment_with_tls_refuses_rogue_nodes_then_runs_plain_and_dp_secure_federations(
        deployment: Deployment) -> None:
    """One SuperLink for two one-round runs (every message starts a ClientApp process, so a round
    costs most of a minute here): a plain FedAvg run where the school crashes while training, then
    record-level DP-SGD under SecAgg+ where the school crashes after the key exchange; the other
    two still make each round (threshold 2 of 3)."""
    dep, root = deployment, deployment.root
    nodes = start_three_organisations(dep)
    rogue = dep.start_supernode("rogue", root / "certs" / "nodes" / "rogue", root / "data" / "hospital")
    plain = dep.start_supernode("plain", None, root / "data" / "hospital", tls=False)

    out = root / "out"
    result, report = run(dep, out, 'num-rounds=1 faults="school:crash@1"')
    assert "round 1/1  accepted 2/3" in result.stdout, result.stdout[-3000:]
    (r1,) = report["rounds"]
    # Only the authorised three took part: the hospital and the bank under the names their keys were
    # registered with, the school under its own, dropped mid-round by name.
    clients = {c["id"]: c for c in r1["clients"]}
    assert set(clients) == set(ORGS) and {c for c in clients if clients[c]["accepted"]} == {"hospital", "bank"}
    assert clients["school"]["reason"].startswith("client failed")
    # The global model improved: validation loss below the (seeded) initial model's.
    cfg = FlConfig(federation="three-orgs-mini", charset="mini", initial_model="scratch", val_lines=24)
    model, charset, _ = initial_model(cfg)
    val = public_lines(cfg.federation, cfg.val_lines, cfg.seed, charset.version, charset)
    assert r1["val_loss"] < validation_loss(model, charset, val)
    assert load_checkpoint(out / "round-1.pt").provenance["round"] == 1
    # The server has no organisation's test lines: each node scored the last round on its own held-out ones.
    assert report["final"]["source"].startswith("federated evaluation") and set(report["final"]["clients"]) == set(ORGS)
    assert all(c["own_test_lines"] == 4 for c in report["final"]["clients"].values())  # every 10th of 48 lines
    assert (out / "model.onnx").is_file()  # the ServerApp publishes the model in a deployment too

    deadline = time.time() + 60
    while (rogue.poll() is None or plain.poll() is None) and time.time() < deadline:
        time.sleep(1)
    assert rogue.poll() not in (None, 0) and plain.poll() not in (None, 0)
    assert "Failed to activate SuperNode" in dep.log("supernode-rogue")
    assert "could not establish a connection" in dep.log("supernode-plain")

    _, report = run(dep, root / "out-secure", 'num-rounds=1 faults="school:crash@1" secure.method="secagg+" '
                                               'secure.max-weight=48.0 dp.level="record" dp.noise-multiplier=1.0')
    (r1,) = report["rounds"]
    assert r1["applied"] and r1["accepted"] == 2
    assert {c["id"]: c for c in r1["clients"]}["school"]["reason"].startswith("dropped")
    # The server checked the unmasked mean only, and each node's epsilon came back in the clear.
    assert {s["client"] for s in r1["steps"] if s["step"] == "check"} == {"secure-sum"}
    assert {s["client"] for s in r1["steps"] if s["step"] == "dp-sgd" and s.get("epsilon")} == {"hospital", "bank"}
    assert all(c["bytes_up"] > 0 for c in r1["clients"] if c["accepted"])

    # Revoking a node (deploy/README.md): unregistered, its SuperNode is turned away and stops.
    school_id, school = nodes["school"]
    assert dep.flwr("supernode", "unregister", school_id, "fedocr").returncode == 0
    listed = json.loads(dep.flwr("supernode", "list", "fedocr", "--format", "json").stdout)["nodes"]
    assert {n["node-id"]: n["status"] for n in listed}[school_id] == "unregistered"
    deadline = time.time() + 60
    while school.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert school.poll() is not None and nodes["bank"][1].poll() is None
