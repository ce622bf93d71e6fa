"""A node's name comes from the operator's registration of its key, not from the node: one that
calls itself by another organisation's name takes no part in the run, and the report says why.
The ServerApp and ClientApp handlers run unchanged in process (fl_inprocess)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from fedocr.data import SyntheticLines, write_line_set
from fedocr.data.organisations import MINI_PRESETS, named_charset

sys.path.insert(0, str(Path(__file__).parent))
from fl_inprocess import run_in_process  # noqa: E402


@pytest.mark.slow
def test_a_node_claiming_another_organisations_name_takes_no_part(tmp_path: Path, monkeypatch: Any) -> None:
    charset = named_charset("mini")
    for i, org in enumerate(("hospital", "bank", "school")):
        lines = SyntheticLines(MINI_PRESETS[org], 48, seed=60 + i, charset=charset)
        write_line_set(tmp_path / org, (lines[j] for j in range(len(lines))))
    nodes = [{"data-path": str(tmp_path / "hospital"), "name": "hospital"},
             {"data-path": str(tmp_path / "bank")},                               # no name of its own
             {"data-path": str(tmp_path / "school"), "name": "school"},
             {"data-path": str(tmp_path / "hospital"), "name": "hospital"}]       # registered as clinic-7
    registered = {101: "hospital", 102: "bank", 103: "school", 104: "clinic-7"}
    printed: list[str] = []
    report, _ = run_in_process(tmp_path, monkeypatch, rounds=1, printer=printed.append, node_configs=nodes,
                               registered=registered, **{"min-accepted": 3})
    (r1,) = report["rounds"]
    assert r1["applied"] and {c["id"] for c in r1["clients"]} == {"hospital", "bank", "school"}
    assert all(c["accepted"] for c in r1["clients"])
    (refused,) = [s for s in r1["steps"] if s["step"] == "identity"]
    assert refused["client"] == "*" and refused["refused"] == {"clinic-7": "impersonation: its key is registered as 'clinic-7' but it calls "
                                              "itself 'hospital'"}
    assert any("clinic-7: impersonation" in line for line in printed)
