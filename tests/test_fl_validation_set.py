"""What the server validates on (`val-data`): the public mix, the members' own styles, or a data set
on disk; the choice decides how rounds, the best round and each node's contribution are judged."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedocr.data import write_line_set
from fedocr.data.organisations import MINI_ALPHABET, member_lines, named_charset, org_lines
from fedocr.federated.config import ConfigError, FlConfig
from fedocr.federated.rounds import FederatedServer
from fedocr.federated.state import ServerState
from fedocr.federated.validate import validate, validation_lines, validation_source
from fedocr.federated.weights import model_weights
from fedocr.model import load_checkpoint
from fl_inprocess import WARM, run_in_process

MINI = named_charset("mini")
OWN_HANZI = {"hospital": set("医院日期"), "bank": set("银行金额"), "school": set("学校中国人民")}


def test_the_members_set_takes_turns_between_the_organisations_and_shares_no_line_with_any_node() -> None:
    lines = member_lines("three-orgs-mini", 30, 0, MINI.version, MINI)
    assert len(lines) == 30
    for i, (_, text) in enumerate(lines):   # interleaved: the first k lines already hold every member
        org = ("hospital", "bank", "school")[i % 3]
        assert set(text) - set(MINI_ALPHABET[:10]) <= OWN_HANZI[org], (i, text)
    for org in OWN_HANZI:
        for split in ("train", "test"):
            node_images = [image for image, _ in org_lines("three-orgs-mini", org, split, 48, 0, MINI.version, MINI)]
            assert not any(image.shape == own.shape and np.array_equal(image, own)
                           for image, _ in lines for own in node_images), (org, split)


def test_a_validation_set_is_checked_where_it_is_read_the_server() -> None:
    with pytest.raises(ConfigError, match="val-data: .*nor an absolute path"):
        FlConfig.from_run_config({"federation": "three-orgs-mini", "val-data": "relative/lines"})
    # A node builds the same config from the run config and has no copy of the server's lines.
    cfg = FlConfig.from_run_config({"federation": "three-orgs-mini", "val-data": "/nonexistent/fedocr-lines"})
    with pytest.raises(ConfigError, match="val-data: /nonexistent/fedocr-lines does not exist on the server"):
        validation_lines(cfg, MINI)


def test_a_validation_set_the_vocabulary_cannot_read_is_refused(tmp_path: Path) -> None:
    """Lines nobody can encode would be skipped, and an empty set scores every model CER 0."""
    image = next(iter(member_lines("three-orgs-mini", 1, 0, MINI.version, MINI)))[0]
    write_line_set(tmp_path / "latin", [(image, "ABC"), (image, "xyz")])
    cfg = FlConfig.from_run_config({"federation": "three-orgs-mini", "val-data": str(tmp_path / "latin")})
    with pytest.raises(ConfigError, match="none of its 2 lines can be written in the model's vocabulary"):
        validation_lines(cfg, MINI)


def test_a_run_resumed_with_another_validation_set_is_refused(tmp_path: Path) -> None:
    settings = {"federation": "three-orgs-mini", "charset": "mini", "initial-model": str(WARM), "val-lines": 8,
                "out-dir": str(tmp_path / "out"), "store": str(tmp_path / "runs.db")}
    first = FlConfig.from_run_config(settings)
    state = ServerState.fresh(model_weights(load_checkpoint(WARM).model), MINI.version)
    state.round, state.val_source = 1, validation_source(first)
    state.save(first.out_path())
    with pytest.raises(RuntimeError, match="validated on public x 8, seed 0.* on members x 8"):
        FederatedServer(FlConfig.from_run_config({**settings, "val-data": "members"}), printer=lambda _: None)


def test_the_server_validates_on_the_folder_it_is_given_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "consortium-val"
    write_line_set(folder, list(member_lines("three-orgs-mini", 10, 7, MINI.version, MINI)))
    cfg = FlConfig.from_run_config({"federation": "three-orgs-mini", "val-data": str(folder), "val-lines": 3})
    assert len(validation_lines(cfg, MINI)) == 10   # val-lines counts synthetic lines only
    start = load_checkpoint(WARM)
    expected, _ = validate(start.model, start.charset, validation_lines(cfg, start.charset))
    printed: list[str] = []
    report, _ = run_in_process(tmp_path, monkeypatch, rounds=1, printer=printed.append, **{"val-data": str(folder)})
    assert report["config"]["val_data"] == str(folder)
    assert any(line.startswith("round 0: initial model") and line.endswith(f"val CER {expected:.4f}")
               for line in printed)


def test_a_deployment_validating_on_the_members_lines_fails_with_a_reason_before_any_round(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real SuperNodes (a data-path each): the server has none of the members' lines to validate on.
    nodes = []
    for org in ("hospital", "bank"):
        write_line_set(tmp_path / org, list(org_lines("three-orgs-mini", org, "train", 12, 0, MINI.version, MINI)))
        nodes.append({"data-path": str(tmp_path / org), "name": org, "threads": 1})
    report, _ = run_in_process(tmp_path, monkeypatch, rounds=1, node_configs=nodes, **{"val-data": "members"})
    assert report["status"] == "failed" and report["rounds"] == []
    assert "val-data: members is the simulated organisations' lines" in report["error"]
