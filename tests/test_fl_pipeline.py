"""The update pipeline as a chain of steps: compression and its decoding, the commit gate, step
state, the builders, and the rule that the pipeline is NumPy only."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedocr.federated.config import ConfigError, FlConfig
from fedocr.federated.node_state import load_node_state, save_node_state
from fedocr.federated.pipeline.build import build_client_chain, build_server_chain, describe, step_rng
from fedocr.federated.pipeline.compress import (CompressConfig, Decode, Quantize, TopK, decode_positions,
                                                encode_positions, varint_decode, varint_encode)
from fedocr.federated.pipeline.settings import StepConfigError
from fedocr.federated.pipeline.types import StepContext, Update

PIPELINE = Path(__file__).resolve().parents[1] / "src" / "fedocr" / "federated" / "pipeline"


def _ctx(state: dict | None = None, reference: dict | None = None, rnd: int = 1) -> StepContext:
    return StepContext(rnd, np.random.default_rng(0), {} if state is None else state, reference or {})


def _delta(seed: int = 0, n: int = 10_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.normal(size=(n // 100, 100)).astype(np.float32),
            "head.bias": rng.normal(size=(7,)).astype(np.float32),
            "norm.num_batches_tracked": np.array(3, dtype=np.int64)}


def _wire(tensors: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in tensors.values())


def test_the_pipeline_imports_neither_flower_nor_torch() -> None:
    # dp_accounting: the RDP accountant; tenseal: CKKS; scipy: the cluster split's linkage (the
    # subprocess below checks they bring no torch)
    allowed = {"numpy", "scipy", "dp_accounting", "tenseal", "__future__"} | set(sys.stdlib_module_names)
    for path in PIPELINE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] in allowed or name.startswith("fedocr.federated.pipeline"), (path.name, name)
    code = ("import sys, tenseal, scipy.cluster.hierarchy, fedocr.federated.pipeline.build; "
            "sys.exit(bool({'torch', 'flwr'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_top_k_keeps_the_largest_entries_and_error_feedback_keeps_the_rest() -> None:
    delta = _delta()
    state: dict = {}
    step = TopK(CompressConfig(top_k=0.1))
    sent = step(Update("bank", delta, 10), _ctx(state))
    decoded = Decode(CompressConfig(top_k=0.1))(sent, _ctx(reference=delta))
    assert decoded.rejected is None
    dense = decoded.tensors["conv.weight"]
    assert np.count_nonzero(dense) == 1000  # 10% of 10,000 entries
    kept = np.abs(delta["conv.weight"][dense != 0])
    assert kept.min() >= np.abs(delta["conv.weight"][dense == 0]).max()  # the largest ones
    # What was not sent is the residual: sent + residual is exactly what was to be sent.
    assert np.array_equal(dense + state["residual"]["conv.weight"], delta["conv.weight"])
    assert decoded.tensors["norm.num_batches_tracked"] == 3  # integer buffers travel dense
    # Next round the residual is added first, so a small entry left out builds up until it is sent.
    second = Decode(CompressConfig(top_k=0.1))(step(Update("bank", delta, 10), _ctx(state, rnd=2)),
                                                _ctx(reference=delta))
    total_sent = dense + second.tensors["conv.weight"]
    assert np.allclose(total_sent + state["residual"]["conv.weight"], 2 * delta["conv.weight"], atol=1e-5)


def test_top_k_warm_up_sends_denser_updates_in_the_first_rounds() -> None:
    config = CompressConfig(top_k=0.1, warmup_rounds=2)
    assert [round(config.fraction(r), 3) for r in (1, 2, 3, 9)] == [0.464, 0.215, 0.1, 0.1]
    step, delta = TopK(config), _delta()
    kept = [step(Update("bank", delta, 10), _ctx({}, rnd=r)).records[-1].info["kept"] for r in (1, 2, 3)]
    assert kept[0] > kept[1] > kept[2] == 1000 + 1                # then 10% of each tensor (7 biases: 1)
    with pytest.raises(StepConfigError, match="warmup-rounds"):
        CompressConfig(warmup_rounds=2)                      # a warm-up without Top-K means nothing


def test_top_k_records_the_share_of_the_delta_it_kept() -> None:
    step = TopK(CompressConfig(top_k=0.1, error_feedback=False))
    flat = {"w": np.ones((100, 100), np.float32)}                  # AdamW-like: every weight moved alike
    heavy = {"w": np.random.default_rng(0).standard_cauchy((100, 100)).astype(np.float32)}  # SGD-like tail

    def kept_energy(delta: dict[str, np.ndarray]) -> float:
        return step(Update("bank", delta, 10), _ctx()).records[-1].info["kept_energy"]

    assert kept_energy(flat) == pytest.approx(0.1)
    assert kept_energy(heavy) > 0.95


def test_without_error_feedback_nothing_is_remembered() -> None:
    state: dict = {}
    TopK(CompressConfig(top_k=0.1, error_feedback=False))(Update("bank", _delta(), 10), _ctx(state))
    assert "residual" not in state


def test_compressed_updates_are_much_smaller_on_the_wire() -> None:
    delta = {"w": np.random.default_rng(1).normal(size=(200_000,)).astype(np.float32)}
    dense = _wire(delta)
    for top_k, quantize, factor in ((0.1, "fp16", 10), (0.01, "fp16", 50), (0.0, "int8", 3.9), (0.0, "fp16", 1.99)):
        config = CompressConfig(top_k=top_k, quantize=quantize)
        update = Update("bank", delta, 10)
        if top_k:
            update = TopK(config)(update, _ctx())
        update = Quantize(config)(update, _ctx())
        assert dense / _wire(update.tensors) >= factor, (top_k, quantize)
        back = Decode(config)(update, _ctx(reference=delta))
        assert back.rejected is None and back.tensors["w"].dtype == np.float32 and back.tensors["w"].shape == (200_000,)


def test_int8_quantisation_errs_by_at_most_half_a_step() -> None:
    delta = _delta()
    config = CompressConfig(quantize="int8")
    back = Decode(config)(Quantize(config)(Update("bank", delta, 10), _ctx()), _ctx(reference=delta))
    scale = np.abs(delta["conv.weight"]).max() / 127
    assert np.abs(back.tensors["conv.weight"] - delta["conv.weight"]).max() <= scale / 2 + 1e-7


def test_position_encodings_are_the_smallest_that_fits() -> None:
    dense_mask = np.zeros(10_000, bool)
    dense_mask[::5] = True
    assert encode_positions(dense_mask)[0] == "topk.mask"
    sparse_mask = np.zeros(100_000, bool)
    sparse_mask[::100] = True
    kind, data = encode_positions(sparse_mask)
    assert kind == "topk.gapvar" and data.nbytes == 1000         # a byte per gap of 100
    spread_out = np.zeros(200_000, bool)
    spread_out[::20_000] = True                                  # gaps of 3 varint bytes, 2 as uint16
    assert encode_positions(spread_out)[0] == "topk.gap16"
    far = np.zeros(200_000, bool)
    far[[0, 199_999]] = True                                     # too far for uint16: 1 + 3 varint bytes
    kind, data = encode_positions(far)
    assert kind == "topk.gapvar" and data.nbytes == 4
    assert list(decode_positions(kind, data, far.size)) == [0, 199_999]


def test_varints_round_trip_any_int32_and_refuse_a_cut_or_overlong_value() -> None:
    values = np.array([0, 1, 127, 128, 16_383, 16_384, 2**21, 2**31 - 1], dtype=np.int64)
    encoded = varint_encode(values)
    assert encoded.nbytes == 1 + 1 + 1 + 2 + 2 + 3 + 4 + 5
    assert np.array_equal(varint_decode(encoded), values)
    with pytest.raises(ValueError, match="cut off"):
        varint_decode(encoded[:-1])
    with pytest.raises(ValueError, match="longer than"):
        varint_decode(np.array([0x80] * 5 + [1], dtype=np.uint8))


def test_a_corrupt_sparse_update_is_rejected_with_a_reason_not_an_exception() -> None:
    delta = _delta()
    config = CompressConfig(top_k=0.01)
    sent = TopK(config)(Update("bank", delta, 10), _ctx())
    bad = dict(sent.tensors)
    key = next(k for k in bad if k.startswith("float-tensors@topk.") and not k.endswith(".v"))
    bad[key] = np.full_like(bad[key], 60_000) if bad[key].dtype != np.uint8 else bad[key][:3]
    out = Decode(config)(sent.with_tensors(bad), _ctx(reference=delta))
    assert out.rejected and out.rejected.startswith("unreadable update")
    missing_values = {k: v for k, v in sent.tensors.items() if not k.endswith("@topk.v")}
    assert Decode(config)(sent.with_tensors(missing_values), _ctx(reference=delta)).rejected


def test_the_gate_rolls_back_a_round_that_validates_worse_than_the_tolerance() -> None:
    chain = build_server_chain(FlConfig.from_run_config({"rollback.enabled": True, "rollback.tolerance": 0.01})
                               .to_run_config())
    verdict, records = chain.decide(0.30, 0.25, 3, 0)
    assert not verdict.commit and "rolled back" in (verdict.reason or "") and records[0].info["commit"] is False
    assert chain.decide(0.255, 0.25, 3, 0)[0].commit
    assert build_server_chain(FlConfig().to_run_config()).decide(0.9, 0.1, 3, 0)[0].commit  # off: always commit


def test_a_candidate_leaves_the_committed_step_state_untouched() -> None:
    chain = build_server_chain(FlConfig(server_momentum=0.9).to_run_config())
    weights = {"conv.weight": np.zeros(3, np.float32)}
    updates = [Update("a", {"conv.weight": np.ones(3, np.float32)}, 10)]
    committed: dict = {"fedavgm": {"velocity": {"conv.weight": np.full(3, 5.0, np.float32)}}}
    candidate = chain.candidate(weights, updates, 2, 0, committed)
    assert np.allclose(committed["fedavgm"]["velocity"]["conv.weight"], 5.0)  # a rollback keeps this
    assert np.allclose(candidate.states["fedavgm"]["velocity"]["conv.weight"], 5.5)
    assert np.allclose(candidate.weights["conv.weight"], 5.5)
    assert [(r.step, r.client, r.info) for r in candidate.records] == [("fedavg", "a", {"share": 1.0})]


def test_fedavg_does_not_depend_on_the_order_replies_arrive_in() -> None:
    chain = build_server_chain(FlConfig().to_run_config())
    weights = _delta(9)
    updates = [Update(name, _delta(i), 10 + 7 * i) for i, name in enumerate(["c", "a", "b"])]
    first = chain.candidate(weights, updates, 1, 0, {}).weights
    second = chain.candidate(weights, list(reversed(updates)), 1, 0, {}).weights
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_the_default_chain_is_fedavg_and_each_option_adds_its_step() -> None:
    assert build_client_chain(FlConfig().to_run_config()).steps == ()
    server = build_server_chain(FlConfig().to_run_config())
    assert [s.name for s in server.screen] == ["check", "norm-bound", "replay"] and server.transforms == ()
    rc = FlConfig.from_run_config({"aggregate": "backbone", "compress.top-k": 0.01, "compress.quantize": "int8",
                                   "server-momentum": 0.5, "faults": "bank:nan@1"}).to_run_config()
    assert [s.name for s in build_client_chain(rc).steps] == ["local-head", "top-k", "quantize", "drill"]
    assert [s.name for s in build_server_chain(rc).screen] == ["decode", "check", "norm-bound", "replay"]
    text = describe(rc)
    assert text.index("top-k") < text.index("quantize") < text.index("decode") < text.index("fedavgm")


def test_step_settings_are_validated_by_name() -> None:
    for bad, key in (({"compress.top-k": 1.5}, "compress.top-k"), ({"compress.quantize": "int4"}, "compress.quantize"),
                     ({"compress.topk": 0.1}, "compress.topk: unknown key"), ({"rollback.tolerance": -1}, "tolerance"),
                     ({"compress.error-feedback": "maybe"}, "compress.error-feedback")):
        with pytest.raises(ConfigError, match=key):
            FlConfig.from_run_config(bad)
    nested = FlConfig.from_run_config({"compress": {"top-k": "0.1", "error-feedback": "false"}})
    assert nested.steps["compress.top-k"] == 0.1 and nested.steps["compress.error-feedback"] is False


def test_node_state_survives_a_restart_but_not_into_another_run(tmp_path: Path) -> None:
    path = tmp_path / "bank.npz"
    residual = {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_node_state(path, "run-a", {"top-k": {"residual": residual, "rounds": np.array(2)}})
    loaded = load_node_state(path, "run-a")
    assert np.array_equal(loaded["top-k"]["residual"]["conv.weight"], residual["conv.weight"])
    assert int(loaded["top-k"]["rounds"]) == 2
    assert load_node_state(path, "run-b") == {} and load_node_state(tmp_path / "none.npz", "run-a") == {}
    path.write_bytes(b"not an npz")
    assert load_node_state(path, "run-a") == {}


def test_step_random_streams_are_seeded_per_run_round_node_and_step() -> None:
    draw = lambda *a: step_rng(*a).integers(1 << 30)  # noqa: E731
    assert draw(0, 1, "bank", "noise") == draw(0, 1, "bank", "noise")
    assert len({draw(0, 1, "bank", "noise"), draw(1, 1, "bank", "noise"), draw(0, 2, "bank", "noise"),
                draw(0, 1, "school", "noise"), draw(0, 1, "bank", "top-k")}) == 5
