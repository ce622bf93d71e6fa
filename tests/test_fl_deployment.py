"""Flower's deployment engine on 127.0.0.1: a SuperLink with TLS and SuperNode authentication,
three authorised SuperNodes with their own data folders, one with an unregistered key and one
without TLS. Every process is stopped by PID in the teardown, even when the test fails."""
from __future__ import annotations

import json
import os
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


def start_three_organisations(dep: Deployment) -> None:
    """The SuperLink, then each organisation's key registered and its SuperNode started."""
    root = dep.root
    dep.start_superlink()
    dep.write_connection()
    for org in ORGS:
        result = dep.flwr("supernode", "register", str(root / "certs" / "nodes" / f"{org}.pub"), "fedocr")
        assert result.returncode == 0, result.stdout + result.stderr
    for org in ORGS:
        dep.start_supernode(org, root / "certs" / "nodes" / org, root / "data" / org)


@pytest.mark.slow
def test_deployment_trains_with_tls_and_refuses_unregistered_and_plaintext_nodes(deployment: Deployment) -> None:
    dep, root = deployment, deployment.root
    start_three_organisations(dep)
    rogue = dep.start_supernode("rogue", root / "certs" / "nodes" / "rogue", root / "data" / "hospital")
    plain = dep.start_supernode("plain", None, root / "data" / "hospital", tls=False)

    out, store = root / "out", root / "runs.db"
    run_config = (f'num-rounds=2 federation="three-orgs-mini" charset="mini" initial-model="scratch" val-lines=24 '
                  f'fraction-train=1.0 min-accepted=2 round-deadline-s=240 faults="school:crash@2" '
                  f'out-dir="{out}" store="{store}"')
    result = dep.flwr("run", str(Path(__file__).resolve().parents[1]), "fedocr", "--run-config", run_config,
                      "--stream", timeout=480)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round 2/2  accepted 2/3" in result.stdout, result.stdout[-3000:]

    report = json.loads((out / "report.json").read_text())
    r1, r2 = report["rounds"]
    assert {c["id"] for c in r1["clients"] if c["accepted"]} == set(ORGS)  # only the authorised three took part
    school = {c["id"]: c for c in r2["clients"]}["school"]
    assert not school["accepted"] and school["reason"].startswith("client failed")  # dropped mid-round, by name
    # The global model improved: validation loss below the (seeded) initial model's.
    cfg = FlConfig(federation="three-orgs-mini", charset="mini", initial_model="scratch", val_lines=24)
    model, charset, _ = initial_model(cfg)
    val = public_lines(cfg.federation, cfg.val_lines, cfg.seed, charset.version, charset)
    assert r2["val_loss"] < validation_loss(model, charset, val)
    assert load_checkpoint(out / "round-2.pt").provenance["round"] == 2
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


@pytest.mark.slow
def test_deployment_with_dp_sgd_and_secure_aggregation_survives_a_node_dropping_mid_protocol(
        deployment: Deployment) -> None:
    """Record-level DP-SGD on every node, SecAgg+ between them over TLS; in round 2 the school
    crashes after the key exchange and the other two still make the round (threshold 2 of 3)."""
    dep, root = deployment, deployment.root
    start_three_organisations(dep)
    out = root / "out"
    run_config = (f'num-rounds=2 federation="three-orgs-mini" charset="mini" initial-model="scratch" val-lines=24 '
                  f'fraction-train=1.0 min-accepted=2 round-deadline-s=240 faults="school:crash@2" '
                  f'secure.method="secagg+" secure.max-weight=48.0 dp.level="record" dp.noise-multiplier=1.0 '
                  f'out-dir="{out}" store="{root / "runs.db"}"')
    result = dep.flwr("run", str(Path(__file__).resolve().parents[1]), "fedocr", "--run-config", run_config,
                      "--stream", timeout=480)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    r1, r2 = report["rounds"]
    assert r1["applied"] and r1["accepted"] == 3
    assert r2["applied"] and r2["accepted"] == 2
    assert {c["id"]: c for c in r2["clients"]}["school"]["reason"].startswith("dropped")
    # The server checked the unmasked mean only, and each node's epsilon came back in the clear.
    assert {s["client"] for s in r1["steps"] if s["step"] == "check"} == {"secure-sum"}
    assert {s["client"] for s in r1["steps"] if s["step"] == "dp-sgd" and s.get("epsilon")} == set(ORGS)
    assert all(c["bytes_up"] > 0 for c in r1["clients"])
