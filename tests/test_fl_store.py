"""The run store and the typed run config."""
from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path

import pytest

from fedocr.federated.config import ConfigError, FlConfig
from fedocr.federated.pipeline.drills import fault_for, parse_faults
from fedocr.federated.runs.report import build_report
from fedocr.federated.runs.store import ClientRecord, RoundRecord, RunStore
from fedocr.federated.runs.timing import union_seconds

ROOT = Path(__file__).resolve().parents[1]


def _round(n: int, cer: float) -> RoundRecord:
    return RoundRecord(round=n, seconds=3.0, sampled=2, accepted=1, applied=False, val_cer=cer, val_loss=1.0, lr=1e-3 / n,
                       note="not applied: 1 accepted update(s) < threshold 2",
                       clients=[ClientRecord("bank", "7", True, None, examples=64, loss=1.2, update_norm=3.4,
                                             bytes_up=100, bytes_down=100),
                                ClientRecord("school", "8", False, "non-finite values (NaN/Inf) in x", examples=64)])


def test_store_records_rounds_per_client_in_wal_mode(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.db") as store:
        store.start_run("abc123", "demo", {"num_rounds": 2}, "three-orgs", str(tmp_path), flower_run_id=42)
        store.record_round("abc123", _round(1, 0.5))
        store.record_round("abc123", _round(1, 0.4))  # a round redone after a restart replaces its record
        store.record_round("abc123", _round(2, 0.3))
        store.finish_run("abc123", final={"clients": {}})
        rounds = store.rounds("abc123")
        assert [r.round for r in rounds] == [1, 2] and rounds[0].val_cer == 0.4
        school = [c for c in rounds[0].clients if c.client == "school"][0]
        assert not school.accepted and "NaN" in (school.reason or "")
        assert store.find("abc") == "abc123" and store.find("demo") == "abc123"
        listed = store.runs()
        assert listed[0]["rounds"] == 2 and listed[0]["best_val_cer"] == 0.3
        report = build_report(store, "abc123")
        assert report["rounds"][1]["clients"][0]["id"] == "bank" and report["final"] == {"clients": {}}
        assert report["flower_run_ids"] == ["42"] and report["rounds"][1]["lr"] == 5e-4
    mode = sqlite3.connect(tmp_path / "runs.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_run_config_defaults_match_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert FlConfig.from_run_config(declared) == FlConfig()


def test_run_config_refuses_unknown_keys_and_bad_values_by_name() -> None:
    with pytest.raises(ConfigError, match="num-round: unknown key"):
        FlConfig.from_run_config({"num-round": 3})
    with pytest.raises(ConfigError, match="fraction-train"):
        FlConfig.from_run_config({"fraction-train": 1.5})
    with pytest.raises(ConfigError, match="aggregate"):
        FlConfig.from_run_config({"aggregate": "median"})
    with pytest.raises(ConfigError, match="faults"):
        FlConfig.from_run_config({"faults": "bank:explode@1"})


def test_clients_per_round_is_never_below_the_threshold() -> None:
    cfg = FlConfig(fraction_train=0.4, min_accepted=2)
    assert cfg.clients_per_round(3) == 2 and cfg.clients_per_round(10) == 4 and cfg.clients_per_round(100) == 40
    assert FlConfig(fraction_train=0.1, min_accepted=3).clients_per_round(10) == 3
    # 0.1 x 100 is 10.000000000000002 in floating point: still 10 clients, not 11
    assert FlConfig(fraction_train=0.1, min_accepted=2).clients_per_round(100) == 10
    assert FlConfig(fraction_train=0.3, min_accepted=2).clients_per_round(100) == 30


def test_fault_drills_parse() -> None:
    assert [f.kind for f in parse_faults("bank:crash@1, school:hang@2")] == ["crash", "hang"]
    assert fault_for("bank:nan@2", "bank", 2) == "nan" and fault_for("bank:nan@2", "bank", 1) is None


def test_union_of_busy_intervals() -> None:
    assert union_seconds([(0, 2), (1, 3), (5, 6)], 0, 10) == pytest.approx(4)
    assert union_seconds([(-5, 2), (8, 20)], 0, 10) == pytest.approx(4)


def test_run_config_refuses_unknown_sizes_federations_negative_seeds_and_fractional_ints() -> None:
    with pytest.raises(ConfigError, match="model-size"):
        FlConfig.from_run_config({"model-size": "huge"})
    with pytest.raises(ConfigError, match="federation"):
        FlConfig.from_run_config({"federation": "nine-orgs"})
    with pytest.raises(ConfigError, match="seed"):
        FlConfig.from_run_config({"seed": -1})
    for value in (2.7, "2.7", True):
        with pytest.raises(ConfigError, match="num-rounds: expected int"):
            FlConfig.from_run_config({"num-rounds": value})
    assert FlConfig.from_run_config({"num-rounds": 3.0, "seed": "4"}).num_rounds == 3


def test_fl_simulate_config_errors_are_one_line_with_exit_code_2(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from fedocr.cli import main

    for setting in ("seed=2.7", "model-size=huge", "no-such-key=1"):
        code = main(["fl", "simulate", "--preset", "three-orgs-mini", "--rounds", "1", "--out", str(tmp_path / "o"),
                     "--store", str(tmp_path / "runs.db"), "--set", setting])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("fedocr: error: run config"), (setting, err)
    assert not (tmp_path / "runs.db").exists()


def test_a_store_written_before_rounds_recorded_their_rate_still_opens(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("CREATE TABLE rounds (run_id TEXT NOT NULL, round INTEGER NOT NULL, finished TEXT NOT NULL, "
                     "seconds REAL, train_seconds REAL, overhead_seconds REAL, val_seconds REAL, val_cer REAL, "
                     "val_loss REAL, sampled INTEGER, accepted INTEGER, applied INTEGER NOT NULL, note TEXT, "
                     "epsilon REAL, PRIMARY KEY (run_id, round));"
                     "INSERT INTO rounds VALUES ('old', 1, 'then', 2.0, 1.0, 0.5, 0.1, 0.3, 1.0, 2, 2, 1, NULL, NULL);")
    db.close()
    with RunStore(tmp_path / "old.db") as store:
        (old,) = store.rounds("old")
        assert old.val_cer == 0.3 and old.lr is None
        store.record_round("old", _round(2, 0.2))
        assert store.rounds("old")[1].lr == 5e-4
