"""Secure aggregation (Flower's SecAgg+ mod and workflow) inside the round loop: the server gets the
same mean as plain FedAvg but never one node's update, a node that drops mid-protocol does not lose
the round, and what needs individual updates is refused by name."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from fedocr.federated.pipeline.build import build_server_chain, describe, validate_run_config
from fedocr.federated.pipeline.settings import StepConfigError
from fedocr.model import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from fl_inprocess import InProcessGrid, run_in_process  # noqa: E402

SECURE = {"secure.method": "secagg+", "secure.max-weight": 48.0}


def _round_1(out: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_checkpoint(out / "round-1.pt").model.state_dict().items()}


def test_the_secure_mean_equals_fedavg_and_the_server_never_holds_one_update(tmp_path: Path, monkeypatch: Any) -> None:
    seen: list[Message] = []
    deliver = InProcessGrid._deliver

    def recording(self: InProcessGrid, message: Message) -> Message:
        answer = deliver(self, message)
        seen.append(answer)
        return answer

    run_in_process(tmp_path / "plain", monkeypatch, 1)
    monkeypatch.setattr(InProcessGrid, "_deliver", recording)
    report, _ = run_in_process(tmp_path / "secure", monkeypatch, 1, **SECURE)

    plain, secure = _round_1(tmp_path / "plain" / "out"), _round_1(tmp_path / "secure" / "out")
    for key, value in plain.items():   # quantisation to 2^22 levels over +-8: ~1e-6 per entry
        np.testing.assert_allclose(secure[key], value, atol=2e-5, err_msg=key)
    # What reached the server: key material and masked integer vectors, never a float tensor.
    train_replies = [m for m in seen if m.metadata.message_type == "train"]
    assert len(train_replies) == 4 * 3    # four SecAgg+ stages, three nodes
    assert all(len(arrays) == 0 for m in train_replies for arrays in m.content.array_records.values())
    r1 = report["rounds"][0]
    assert r1["applied"] and r1["accepted"] == 3
    assert all(c["update_norm"] is None and c["bytes_up"] > 0 for c in r1["clients"])
    assert {s["client"] for s in r1["steps"] if s["step"] == "check"} == {"secure-sum"}   # checked: the mean only


def test_a_node_that_drops_mid_protocol_does_not_lose_the_round(tmp_path: Path, monkeypatch: Any) -> None:
    # The bank crashes after the key exchange, while training: SecAgg+ rebuilds its masks from the
    # shares the other two hold (threshold 2 of 3), and the round is the mean of the two.
    report, _ = run_in_process(tmp_path, monkeypatch, 1, **SECURE, faults="bank:crash@1", **{"min-accepted": 2})
    r1 = report["rounds"][0]
    clients = {c["id"]: c for c in r1["clients"]}
    assert r1["applied"] and r1["accepted"] == 2
    assert clients["hospital"]["accepted"] and clients["school"]["accepted"]
    assert not clients["bank"]["accepted"] and clients["bank"]["reason"].startswith("dropped")


def test_a_secure_round_needs_three_nodes(tmp_path: Path, monkeypatch: Any) -> None:
    report, _ = run_in_process(tmp_path / "two", monkeypatch, 2, **SECURE,
                               **{"fraction-train": 0.5, "min-accepted": 1})
    assert report["status"] == "failed"   # nothing was applied in any round
    assert not any(r["applied"] for r in report["rounds"])
    assert all("at least 3 sampled nodes" in c["reason"] for r in report["rounds"] for c in r["clients"])


@pytest.mark.parametrize("settings, key", [
    ({"robust.rule": "median"}, "robust.rule"),
    ({"robust.clip-norm": 1.0}, "robust.rule"),
    ({"compress.top-k": 0.1}, "compress.top-k"),
    ({"compress.quantize": "int8"}, "compress.top-k"),
    ({"aggregate": "fedbn"}, "aggregate"),
    ({"dp.level": "client", "dp.noise-multiplier": 1.0}, "dp.level"),
    ({"secure.threshold": 1.0}, "secure.threshold"),
    ({"secure.shares": 5.0, "secure.threshold": 5.0}, "secure.threshold"),
    ({"secure.shares": 2.0}, "secure.shares"),
    ({"secure.method": "paillier"}, "secure.method"),
])
def test_what_needs_individual_updates_is_refused_by_name(settings: dict, key: str) -> None:
    with pytest.raises(StepConfigError, match=key.replace(".", r"\.")):
        validate_run_config({"secure.method": "secagg+", **settings})


def test_the_dry_run_lists_the_mask_and_contribution_scores_are_disabled_with_the_reason() -> None:
    rc = {**SECURE, "dp.level": "record", "dp.noise-multiplier": 1.0, "contribution.method": "loo"}
    validate_run_config(rc)   # record-level DP (on the node) lives with secure aggregation
    text = describe(rc)
    client, server = text.split("server:")
    assert "dp-sgd" in client and client.index("dp-sgd") < client.index("secagg+")
    assert server.index("secagg+") < server.index("check")
    scorer = build_server_chain(rc).scorers[0]
    assert "secagg+ hides each node's update" in (scorer.disabled or "")
