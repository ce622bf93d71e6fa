"""The server's screening of replies and its run bookkeeping, without a federation: replies are
built from Flower records, and the grid is a stand-in."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedocr.cli import main
from fedocr.cli.common import EXIT_FAILURE
from fedocr.federated.config import FlConfig
from fedocr.federated.identity import Registry
from fedocr.federated.pipeline.build import build_server_chain
from fedocr.federated.protocol import read_reply, to_record
from fedocr.federated.rounds import FederatedServer, screen, unique_name
from fedocr.federated.runs.store import ClientRecord, RoundRecord, RunStore

REFERENCE = {"conv.weight": np.zeros((2, 3), np.float32)}


def _reply(node: int, metrics: dict[str, Any], client: str = "bank", version: str = "v1") -> Any:
    content = RecordDict({"info": ConfigRecord({"client": client, "charset-version": version}),
                          "metrics": MetricRecord(metrics),
                          "delta": to_record({"conv.weight": np.full((2, 3), 0.1, np.float32)})})
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), has_error=lambda: False, content=content)


def _screen(reply: Any, cfg: FlConfig | None = None) -> Any:
    chain = build_server_chain((cfg or FlConfig()).to_run_config())
    return screen(read_reply(reply, "node", "v1", bytes_down=10), chain, REFERENCE, server_round=1, seed=0)


def test_malformed_metrics_become_a_rejection_not_a_crash() -> None:
    good = {"num-examples": 8, "train-loss": 1.0, "started": 1.0, "train-started": 2.0, "train-ended": 3.0,
            "ended": 4.0}
    assert _screen(_reply(7, good)).record.accepted
    for bad in ({**good, "num-examples": 2.5}, {**good, "num-examples": [1, 2]},
                {k: v for k, v in good.items() if k != "train-ended"}, {**good, "ended": float("nan")},
                {**good, "train-loss": [0.5]}):
        s = _screen(_reply(7, bad))
        assert s.update is None and not s.record.accepted and s.record.reason.startswith("malformed metrics")
        assert s.busy is None and s.training is None


def test_a_client_claiming_too_many_examples_is_rejected_and_recorded() -> None:
    metrics = {"num-examples": 10**9, "train-loss": 1.0}
    s = _screen(_reply(7, metrics), FlConfig(max_examples=1000))
    assert s.update.rejected and "max-examples=1000" in s.record.reason and s.record.examples == 10**9
    assert not s.record.accepted
    assert FlConfig.from_run_config({"max-examples": 5}).max_examples == 5


def test_a_reply_must_answer_this_rounds_task_and_a_replayed_update_is_rejected() -> None:
    chain = build_server_chain(FlConfig(replay_window=2).to_run_config())
    task = (3, "abc123")
    ok = _reply(7, {"num-examples": 8})
    ok.content["info"].update({"answers-round": 3, "answers-model": "abc123"})
    assert read_reply(ok, "node", "v1", 10, task).record.reason is None
    for answered, why in (((2, "abc123"), "answers round 2"), ((3, "0ld"), "(model 0ld)"),
                          ((None, None), "does not name the round")):
        late = _reply(7, {"num-examples": 8})
        if answered[0] is not None:
            late.content["info"].update({"answers-round": answered[0], "answers-model": answered[1]})
        got = read_reply(late, "node", "v1", 10, task)
        assert got.update is None and "stale reply" in got.record.reason and why in got.record.reason
    # the same tensors again from the same node within the window: a replay; from another node: fine
    states: dict = {}
    def screened(client: str, rnd: int) -> Any:
        return screen(read_reply(_reply(7, {"num-examples": 8}, client=client), "node", "v1", 10), chain,
                      REFERENCE, rnd, 0, states)
    assert screened("bank", 1).record.accepted and screened("school", 1).record.accepted
    again = screened("bank", 2)
    assert not again.record.accepted and again.record.reason == "replayed update: identical to the one it sent in round 1"
    assert screened("bank", 4).record.accepted          # round 1 fell out of the 2-round window
    assert "replay" not in [s.name for s in build_server_chain(FlConfig(replay_window=0).to_run_config()).screen]


def test_two_nodes_with_one_name_get_distinct_store_rows(tmp_path: Path) -> None:
    taken: set[str] = set()
    names = [unique_name("bank", "7", taken), unique_name("bank", "9", taken), unique_name("bank#9", "3", taken)]
    assert names[0] == "bank" and names[1] == "bank#9" and len(set(names)) == 3
    assert unique_name("x" * 500, "1", set()) == "x" * 64
    with RunStore(tmp_path / "runs.db") as store:
        store.start_run("r", "r", {}, None, None)
        store.record_round("r", RoundRecord(1, 1.0, 3, 3, True, clients=[ClientRecord(n, str(i), True)
                                                                         for i, n in enumerate(names)]))
        assert sorted(c.client for c in store.rounds("r")[0].clients) == sorted(names)


class _Grid:
    """A grid whose nodes never come, or whose link breaks."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def get_node_ids(self) -> list[int]:
        if self.error is not None:
            raise self.error
        return []


def _server_cfg(tmp_path: Path) -> FlConfig:
    return FlConfig(federation="three-orgs-mini", charset="mini", initial_model="scratch", val_lines=2,
                    wait_for_nodes_s=0.0, out_dir=str(tmp_path / "out"), store=str(tmp_path / "runs.db"))


def test_a_failed_server_run_is_recorded_as_failed_with_its_reason(tmp_path: Path) -> None:
    server = FederatedServer(_server_cfg(tmp_path), printer=lambda _: None)
    with pytest.raises(RuntimeError, match="link lost"):
        server.run(_Grid(RuntimeError("link lost")))  # type: ignore[arg-type]
    with RunStore(tmp_path / "runs.db") as store:
        run = store.run(server.state.run_id)
    assert run is not None and run["status"] == "failed" and "link lost" in run["error"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and "link lost" in report["error"]


def test_a_run_without_enough_nodes_is_recorded_as_stalled(tmp_path: Path) -> None:
    server = FederatedServer(_server_cfg(tmp_path), printer=lambda _: None)
    report = server.run(_Grid())  # type: ignore[arg-type]
    assert report["status"] == "stalled" and "node(s) connected" in report["error"]


def test_a_server_stopped_before_its_first_round_restarts_as_the_same_run(tmp_path: Path) -> None:
    first = FederatedServer(_server_cfg(tmp_path), printer=lambda _: None)   # then killed: no round, no finish
    again = FederatedServer(_server_cfg(tmp_path), printer=lambda _: None)
    assert again.state.run_id == first.state.run_id and not again.resumed
    again.run(_Grid())  # type: ignore[arg-type]
    with RunStore(tmp_path / "runs.db") as store:
        assert [(r["run_id"], r["status"]) for r in store.runs()] == [(first.state.run_id, "stalled")]
    first.store.close()
    # From another initial model (another seed's init) it is another run: the nodes' state of the
    # first one must not be carried into it.
    other = FederatedServer(_server_cfg(tmp_path).with_(seed=1), printer=lambda _: None)
    assert other.state.run_id != first.state.run_id


@pytest.mark.parametrize("outcome", ["stalled", "failed"])
def test_fl_simulate_exits_non_zero_with_one_line_on_a_stalled_or_failed_run(
        outcome: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import fedocr.federated.sim.simulate as sim

    def fake(cfg: FlConfig, **_: Any) -> dict[str, Any]:
        if outcome == "failed":
            raise sim.SimulationFailed("the federated run failed: link lost")
        return {"run_id": "abc", "status": "stalled", "error": "only 0 node(s) connected", "final": {}}

    monkeypatch.setattr(sim, "simulate", fake)
    code = main(["fl", "simulate", "--preset", "three-orgs-mini", "--rounds", "1", "--out", str(tmp_path / "o"),
                 "--store", str(tmp_path / "runs.db"), "--initial-model", "scratch"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_FAILURE and len(err) == 1 and err[0].startswith("fedocr: error:")
    assert ("link lost" if outcome == "failed" else "stalled: only 0 node(s)") in err[0]


def test_backbone_mode_reports_no_server_val_cer_but_a_note(tmp_path: Path) -> None:
    from fedocr.data.organisations import named_charset, public_lines
    from fedocr.federated.validate import server_validation
    from fedocr.model import CRNN, ModelConfig

    charset = named_charset("mini")
    model, val = CRNN(ModelConfig(len(charset), "tiny")), public_lines("three-orgs-mini", 2, 0, charset.version, charset)
    cer, loss, note = server_validation(model, charset, val, "backbone")
    assert cer is None and loss is None and "not applicable" in (note or "")
    cer, loss, note = server_validation(model, charset, val, "all")
    assert cer is not None and loss is not None and note is None


BANK_7 = Registry({"7": "bank"})


def test_a_node_is_recorded_under_its_registered_name_and_refused_when_it_claims_another() -> None:
    registered = read_reply(_reply(7, {"num-examples": 8}, client="node-7"), "node-7", "v1", 10, registry=BANK_7)
    assert registered.record.client == "bank" and registered.record.reason is None   # no name of its own
    honest = read_reply(_reply(7, {"num-examples": 8}, client="bank"), "node-7", "v1", 10, registry=BANK_7)
    assert honest.record.client == "bank" and honest.update is not None
    impostor = read_reply(_reply(7, {"num-examples": 8}, client="hospital"), "node-7", "v1", 10, registry=BANK_7)
    assert impostor.update is None and impostor.record.client == "bank"
    assert impostor.record.reason == ("impersonation: its key is registered as 'bank' but it calls itself "
                                      "'hospital'")
    unregistered = read_reply(_reply(7, {"num-examples": 8}, client="hospital"), "node-7", "v1", 10)
    assert unregistered.record.client == "hospital" and unregistered.update is not None   # simulation: no registry
    nameless = read_reply(_reply(7, {"num-examples": 8}, client="hospital"), "node-7", "v1", 10,
                          registry=Registry({"3": "hospital"}))   # its key has no name, the claim is another's
    assert nameless.update is None and nameless.record.client == "node-7" and "impersonation" in nameless.record.reason
