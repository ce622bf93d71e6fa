"""The Flower App on Flower's simulation engine: three small organisations, faults, restarts.

Small on purpose (tiny CRNN, 22-character vocabulary, 48 lines per organisation, 2 rounds): these
check the federation's behaviour, not its accuracy (bench/fl_three_orgs.py does that).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fedocr.cli import main
from fedocr.federated.config import FlConfig
from fedocr.federated.sim.simulate import sigterm_as_exit, simulate
from fedocr.federated.state import ServerState
from fedocr.model import load_checkpoint

@pytest.fixture(autouse=True)
def _no_ray_folders_left() -> Iterator[None]:
    """Remove the /tmp/fedocr-ray-PID-* folders a test leaves (a killed run cannot remove its own),
    but not those of a run still going (another pytest worker's)."""
    before = set(Path("/tmp").glob("fedocr-ray-*"))
    yield
    for folder in set(Path("/tmp").glob("fedocr-ray-*")) - before:
        owner = int(folder.name.split("-")[2])
        if owner == os.getpid() or not psutil.pid_exists(owner):
            shutil.rmtree(folder, ignore_errors=True)


SMALL = ["--preset", "three-orgs-mini", "--lines", "48", "--val-lines", "24", "--test-lines", "16",
         "--initial-model", "scratch", "--fraction", "1", "--min-accepted", "2"]


@pytest.mark.slow
def test_simulation_writes_report_with_baselines_rejects_bad_updates_and_keeps_the_threshold(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out, store = tmp_path / "out", tmp_path / "runs.db"
    env = dict(os.environ)
    code = main(["fl", "simulate", *SMALL, "--rounds", "2", "--out", str(out), "--store", str(store),
                 "--deadline", "60", "--set", "faults=school:nan@1,bank:crash@2,hospital:charset@2"])
    assert code == 0
    # The SuperLink it started, its simulation runtime and Ray are gone; nothing of the run is left.
    assert psutil.Process().children(recursive=True) == []
    assert not list(Path("/tmp").glob(f"fedocr-ray-{os.getpid()}-*")) and dict(os.environ) == env
    printed = capsys.readouterr().out
    assert "\x1b[" not in printed and "DEPRECATED" not in printed and "FutureWarning" not in printed
    assert "round 1/2  accepted 2/3" in printed and "round 2/2  accepted 1/3" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "three-orgs-mini" and report["config"]["num_rounds"] == 2
    r1, r2 = report["rounds"]
    by_id = {c["id"]: c for c in r1["clients"]}
    assert set(by_id) == {"hospital", "bank", "school"}
    assert not by_id["school"]["accepted"] and "non-finite" in by_id["school"]["reason"]
    assert by_id["hospital"]["accepted"] and by_id["hospital"]["examples"] == 48
    assert by_id["hospital"]["bytes_up"] > 0 and by_id["hospital"]["update_norm"] > 0
    round2 = {c["id"]: c for c in r2["clients"]}
    assert not round2["bank"]["accepted"] and round2["bank"]["reason"].startswith("client failed")
    assert not round2["hospital"]["accepted"] and round2["hospital"]["reason"].startswith("charset mismatch")
    # One accepted update is below the participation threshold of two: the round is not applied.
    assert r1["applied"] and not r2["applied"] and "threshold 2" in r2["note"]
    assert r2["val_cer"] == r1["val_cer"]
    for org in ("hospital", "bank", "school"):
        final = report["final"]["clients"][org]
        assert set(final["own_test_cer"]) == {"local_only", "federated", "centralized"}
        assert set(final["other_test_cer"]) == {"local_only", "federated", "centralized"}
    ckpt = load_checkpoint(out / "round-2.pt")
    assert ckpt.provenance["run_id"] == report["run_id"] and ckpt.provenance["round"] == 2
    assert (out / "model.pt").is_file() and (out / "centralized.pt").is_file() and (out / "model.onnx").is_file()
    assert main(["fl", "runs", "--store", str(store)]) == 0
    assert report["run_id"] in capsys.readouterr().out
    assert main(["fl", "show", report["run_id"][:6], "--store", str(store)]) == 0
    assert "rejected: non-finite" in capsys.readouterr().out


def _committed_round(out: Path) -> int:
    state = ServerState.load(out)   # written by atomic rename: never read half-written
    return state.round if state is not None else 0


@pytest.mark.slow
def test_round_survives_a_hung_client_and_server_restart_resumes_from_last_round(tmp_path: Path) -> None:
    out, store = tmp_path / "out", tmp_path / "runs.db"
    args = [sys.executable, "-m", "fedocr", "fl", "simulate", *SMALL, "--rounds", "3", "--out", str(out),
            "--store", str(store), "--deadline", "20", "--set", "faults=hospital:hang@1", "--set", "server-momentum=0.5",
            "--no-baselines"]
    log = (tmp_path / "first.log").open("w")
    # Its own session, so the kill below reaches the run's Ray processes too.
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started: dict[int, psutil.Process] = {}
    try:
        _until_round_one(proc, out, started, tmp_path / "first.log")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the server dies mid-run, like a crashed host
        _stop(proc, started)
        log.close()
    first = _round_one(store)
    hospital = first["hospital"]
    assert not hospital[0] and "deadline" in hospital[1]  # dropped by name, with the reason
    assert (out / "round-1.pt").is_file()

    lines: list[str] = []
    cfg = FlConfig(federation="three-orgs-mini", charset="mini", initial_model="scratch", lines_per_client=48,
                   val_lines=24, test_lines=16, fraction_train=1.0, min_accepted=2, num_rounds=2,
                   round_deadline_s=60, server_momentum=0.5, out_dir=str(out), store=str(store))
    saved = ServerState.load(out)  # FedAvgM's velocity is the momentum step's state, checkpointed with round 1
    assert saved is not None and saved.steps["fedavgm"]["velocity"].keys() == saved.weights.keys()
    report = simulate(cfg, baselines=False, printer=lines.append)
    assert psutil.Process().children(recursive=True) == []
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert _round_one(store) == first  # the completed round was kept, not redone
    assert report["rounds"][1]["accepted"] == 3
    assert report["status"] == "finished"


def test_sigterm_ends_a_simulation_once_and_a_second_one_cannot_cut_its_clean_up_short() -> None:
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # else sigterm_as_exit leaves it alone
    during_clean_up = []
    with pytest.raises(SystemExit) as stopped:
        with sigterm_as_exit():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)   # the handler raises here, long before the sleep ends
            finally:
                during_clean_up.append(signal.getsignal(signal.SIGTERM))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert during_clean_up == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
def test_a_terminated_simulation_stops_every_process_it_started(tmp_path: Path) -> None:
    """`kill PID` (SIGTERM) of `fedocr fl simulate` mid-run: it exits 143 and leaves no SuperLink,
    Flower runtime or Ray process behind."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "fedocr", "fl", "simulate", *SMALL, "--rounds", "50", "--out", str(out),
            "--store", str(tmp_path / "runs.db"), "--no-baselines"]
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    started: dict[int, psutil.Process] = {}
    try:
        _until_round_one(proc, out, started, tmp_path / "run.log")
        started.update((c.pid, c) for c in psutil.Process(proc.pid).children(recursive=True))
        assert any("flower-superlink" in " ".join(c.cmdline()) for c in started.values() if c.is_running())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(list(started.values()), timeout=30)
        assert not alive, [" ".join(p.cmdline())[:120] for p in alive if p.is_running()]
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop(proc, started)
        log.close()


def _until_round_one(proc: subprocess.Popen, out: Path, started: dict[int, psutil.Process], log: Path) -> None:
    """Wait until the run's first round is committed (its server state saved, just after the store
    row), remembering every process of the run by PID meanwhile: the SuperLink starts its runtimes
    detached, so they must be known before anything is killed."""
    deadline = time.time() + 300
    while _committed_round(out) < 1 and proc.poll() is None and time.time() < deadline:
        started.update((c.pid, c) for c in psutil.Process(proc.pid).children(recursive=True))
        time.sleep(1)
    assert _committed_round(out) >= 1, log.read_text()[-3000:]


def _stop(proc: subprocess.Popen, started: dict[int, psutil.Process]) -> None:
    """Kill every remembered process of the run that still lives, by PID, and reap the run."""
    for child in started.values():
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(started.values()), timeout=30)
    proc.wait(timeout=30)


def _round_one(store: Path) -> dict[str, tuple[bool, str]]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT client, accepted, reason FROM clients WHERE round=1").fetchall()
    return {c: (bool(a), r or "") for c, a, r in rows}


def test_the_federation_config_pins_actors_here_and_leaves_a_ray_cluster_its_own(monkeypatch) -> None:
    from fedocr.federated.sim.simulate import federation_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = federation_config(100, actors=2)
    assert "num-supernodes=100" in local and "init-args-num-cpus=2" in local
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")   # Ray refuses a CPU count when it joins a cluster
    joined = federation_config(100, actors=2)
    assert "num-supernodes=100" in joined and "init-args-num-cpus" not in joined


def test_many_clients_is_a_long_tail_of_small_nodes_over_the_organisations() -> None:
    from fedocr.data.organisations import get_federation

    fed = get_federation("many-clients")
    sizes = [node.size for node in fed.nodes]
    assert len(fed.nodes) == 100 and len(set(fed.names)) == 100
    assert {node.org for node in fed.nodes} == {"hospital", "bank", "school", "logistics"}
    assert max(sizes) >= 10 and sorted(sizes)[50] == 1      # a few large sites, most with the smallest share
    assert len(get_federation("many-clients-mini-1000").nodes) == 1000
