"""Secure aggregation (Flower's SecAgg+ mod and workflow) inside the round loop: the server gets the
same mean as plain FedAvg but never one node's update, a node that drops mid-protocol does not lose
the round, and what needs individual updates is refused by name."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from fedocr.data import SyntheticLines, write_line_set
from fedocr.data.organisations import MINI_PRESETS, named_charset
from fedocr.federated.pipeline.build import build_server_chain, describe, validate_run_config
from fedocr.federated.pipeline.he import PUBLIC, load_context, make_keys
from fedocr.federated.pipeline.settings import StepConfigError
from fedocr.federated.state import ServerState
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


DISTRIBUTED_DP = {**SECURE, "dp.level": "client", "dp.noise-multiplier": 1.0, "dp.clip": 0.5}


def test_client_level_dp_under_secure_aggregation_is_noised_by_the_nodes_and_a_dropout_is_accounted(
        tmp_path: Path, monkeypatch: Any) -> None:
    report, _ = run_in_process(tmp_path / "all", monkeypatch, 1, **DISTRIBUTED_DP)
    r1 = report["rounds"][0]
    nodes = [s for s in r1["steps"] if s["step"] == "dp-node-noise"]
    assert r1["applied"] and len(nodes) == 3
    assert all(s["sampled"] == 3 and s["noise_std"] == pytest.approx(0.5 / np.sqrt(3)) for s in nodes)
    server = next(s for s in r1["steps"] if s["step"] == "dp-noise")
    assert server["distributed"] and server["noise_multiplier"] == pytest.approx(1.0) and server["epsilon"] > 0
    assert "noise_std" not in server                                    # the server added nothing
    # The bank crashes mid-protocol: two nodes' noise is in the sum, z_eff = sqrt(2/3), more epsilon spent.
    dropped, _ = run_in_process(tmp_path / "drop", monkeypatch, 1, **DISTRIBUTED_DP, faults="bank:crash@1",
                                **{"min-accepted": 2})
    d1 = next(s for s in dropped["rounds"][0]["steps"] if s["step"] == "dp-noise")
    assert d1["aggregated"] == 2 and d1["noise_multiplier"] == pytest.approx(np.sqrt(2 / 3))
    assert d1["epsilon"] > server["epsilon"]


def test_a_secure_round_samples_three_nodes_and_refuses_with_two(tmp_path: Path, monkeypatch: Any) -> None:
    report, _ = run_in_process(tmp_path / "three", monkeypatch, 1, **SECURE, **{"fraction-train": 0.3})
    assert report["rounds"][0]["sampled"] == 3 and report["rounds"][0]["applied"]   # 0.3 of 3 asks for 1
    charset = named_charset("mini")
    two = []
    for i, org in enumerate(("hospital", "bank")):   # two deployment-style nodes with their own folders
        lines = SyntheticLines(MINI_PRESETS[org], 20, seed=i, charset=charset)
        write_line_set(tmp_path / org, (lines[j] for j in range(len(lines))))
        two.append({"data-path": str(tmp_path / org), "name": org})
    report, _ = run_in_process(tmp_path / "two", monkeypatch, 1, node_configs=two, **SECURE, **{"min-accepted": 1})
    assert report["status"] == "failed"   # nothing was applied
    assert all("at least 3 sampled nodes" in c["reason"] for r in report["rounds"] for c in r["clients"])


@pytest.mark.parametrize("settings, key", [
    ({"robust.rule": "median"}, "robust.rule"),
    ({"robust.clip-norm": 1.0}, "robust.rule"),
    ({"compress.top-k": 0.1}, "compress.top-k"),
    ({"compress.quantize": "int8"}, "compress.top-k"),
    ({"aggregate": "fedbn"}, "aggregate"),
    ({"dp.level": "client", "dp.target-epsilon": 3.0}, "dp.noise-multiplier"),   # nodes must not calibrate
    ({"secure.threshold": 1.0}, "secure.threshold"),
    ({"secure.shares": 5.0, "secure.threshold": 5.0}, "secure.threshold"),
    ({"secure.shares": 2.0}, "secure.shares"),
    ({"secure.method": "paillier"}, "secure.method"),
    ({"secure.method": "ckks", "robust.rule": "krum"}, "robust.rule"),
    ({"secure.method": "ckks", "compress.top-k": 0.1}, "compress.top-k"),
    ({"secure.method": "none", "he.top-k": 0.1}, "he.top-k"),
    ({"secure.method": "ckks", "he.poly-degree": 1024}, "he.poly-degree"),
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


# -- homomorphic encryption (CKKS, TenSEAL) ----------------------------------------------------------
@pytest.fixture(scope="module")
def ckks_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("he-keys")
    make_keys(folder)
    return folder


def test_the_he_mean_equals_fedavg_and_the_server_cannot_decrypt(tmp_path: Path, monkeypatch: Any,
                                                                 ckks_keys: Path) -> None:
    run_in_process(tmp_path / "plain", monkeypatch, 1)
    report, cfg = run_in_process(tmp_path / "he", monkeypatch, 1, **{"secure.method": "ckks", "he.keys": str(ckks_keys)})
    plain, encrypted = _round_1(tmp_path / "plain" / "out"), _round_1(tmp_path / "he" / "out")
    for key, value in plain.items():
        np.testing.assert_allclose(encrypted[key], value, atol=1e-6, err_msg=key)
    assert not load_context(ckks_keys / PUBLIC, need_secret=False).is_private()
    with pytest.raises(ValueError, match="cannot decrypt"):
        load_context(ckks_keys / PUBLIC, need_secret=True)
    r1 = report["rounds"][0]
    assert r1["applied"] and r1["accepted"] == 3
    sent = [s for s in r1["steps"] if s["step"] == "ckks"]
    assert len(sent) == 3 and all(s["ciphertexts"] == -(-s["values"] // 4096) for s in sent)
    assert {s["client"] for s in r1["steps"] if s["step"] == "check"} == {"secure-sum"}


def test_he_top_k_sends_the_shared_index_set_and_one_failing_decryptor_hands_over(
        tmp_path: Path, monkeypatch: Any, ckks_keys: Path) -> None:
    import fl_inprocess

    calls: list[int] = []
    decrypt = fl_inprocess.handle_decrypt

    def first_one_fails(msg: Message, context: Any) -> Message:
        calls.append(context.node_id)
        if len(calls) == 1:
            raise RuntimeError("this node is offline")
        return decrypt(msg, context)

    monkeypatch.setattr(fl_inprocess, "handle_decrypt", first_one_fails)
    report, _ = run_in_process(tmp_path, monkeypatch, 2, **{"secure.method": "ckks", "he.keys": str(ckks_keys),
                                                            "he.top-k": 0.1})
    plain_bytes = 1_342_000   # the tiny model's dense fp32 update, as measured by the plain run above
    for r in report["rounds"]:
        assert r["applied"] and r["accepted"] == 3
        sent = [s for s in r["steps"] if s["step"] == "ckks"]
        assert len({s["values"] for s in sent}) == 1   # every node sends the same index set
        assert all(c["bytes_up"] < 3 * plain_bytes for c in r["clients"])   # the decryptor's answer included
    assert len(calls) == 3   # round 1: the first asked failed and the next decrypted; round 2: one
    # The next index set (the largest 10% of the last global step) is checkpointed with the server.
    index = ServerState.load(tmp_path / "out").steps["ckks-index"]
    assert int(np.unpackbits(index["packed"], count=index["size"]).sum()) == -(-index["size"] // 10)


def test_he_without_a_public_key_refuses_to_start_and_names_the_command(tmp_path: Path, monkeypatch: Any) -> None:
    with pytest.raises(FileNotFoundError, match="fedocr fl he-keys"):
        run_in_process(tmp_path, monkeypatch, 1, **{"secure.method": "ckks", "he.keys": str(tmp_path / "none")})


def test_fl_he_keys_writes_a_private_secret_and_a_public_context_and_never_overwrites_silently(tmp_path: Path) -> None:
    def he_keys(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedocr", "fl", "he-keys", "--out", str(tmp_path / "k"),
                               "--poly-degree", "4096", *extra], capture_output=True, text=True, timeout=120)

    made = he_keys()
    assert made.returncode == 0, made.stderr
    secret, public = tmp_path / "k" / "secret.tenseal", tmp_path / "k" / PUBLIC
    assert secret.stat().st_mode & 0o077 == 0          # the nodes' key: readable by its owner only
    assert load_context(secret, need_secret=True).is_private()
    assert not load_context(public, need_secret=False).is_private()
    before = secret.read_bytes()
    again = he_keys()
    assert again.returncode == 4 and "--force" in again.stderr and secret.read_bytes() == before
    assert he_keys("--force").returncode == 0 and secret.read_bytes() != before
