"""Personalisation (issue 15): FedBN keeps BatchNorm on the node, Ditto keeps a personal model
there, both are evaluated as the node would serve them, and a node exports its own model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedocr.cli import main
from fedocr.data import EncodedLines
from fedocr.data.organisations import named_charset, synthetic_org_data
from fedocr.federated.node_state import load_node_state
from fedocr.federated.pipeline.build import build_client_chain, validate_run_config
from fedocr.federated.pipeline.settings import StepConfigError
from fedocr.federated.pipeline.transforms import aggregated_keys, local_keys
from fedocr.federated.pipeline.types import Update
from fedocr.federated.weights import model_weights
from fedocr.model import load_checkpoint
from fedocr.train import TrainConfig, Trainer
from fl_inprocess import WARM, run_in_process


def _weights() -> dict[str, np.ndarray]:
    return model_weights(load_checkpoint(WARM).model)


def test_fedbn_keeps_every_batchnorm_tensor_and_nothing_else_on_the_node() -> None:
    weights = _weights()
    bn = local_keys(weights, "fedbn")
    layers = {k.rpartition(".")[0] for k in weights if k.endswith("running_mean")}
    assert layers and bn == {k for k in weights if k.rpartition(".")[0] in layers}
    assert all(k.rpartition(".")[2] in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
               for k in bn)
    assert set(aggregated_keys(weights, "fedbn")) == set(weights) - bn
    assert local_keys(weights, "all") == set() and all(k.startswith("head.") for k in local_keys(weights, "backbone"))

    chain, states = build_client_chain({"aggregate": "fedbn"}), {}
    delta = {k: np.ones_like(v) for k, v in weights.items()}
    sent = chain.run(Update("bank", delta, 10), 1, 0, weights, states)
    assert set(sent.tensors) == set(weights) - bn
    kept = states["local-bn"]["head"]
    assert set(kept) == bn
    key = next(k for k in bn if k.endswith("running_var"))
    np.testing.assert_allclose(kept[key], weights[key] + 1)     # the node's own statistics after training
    mine = chain.start_weights(weights, states)                  # restored before the next round's training
    np.testing.assert_allclose(mine[key], weights[key] + 1)


def test_ditto_is_refused_with_a_partial_aggregate_and_its_settings_are_checked() -> None:
    with pytest.raises(StepConfigError, match="personal.method"):
        validate_run_config({"personal.method": "ditto", "aggregate": "backbone"})
    with pytest.raises(StepConfigError, match="personal.lambda"):
        validate_run_config({"personal.method": "ditto", "personal.lambda": -1})
    with pytest.raises(StepConfigError, match="personal.method"):
        validate_run_config({"personal.method": "pfedme-typo"})


def test_a_mixed_personal_model_lies_between_the_global_and_the_personal_one() -> None:
    global_weights = _weights()
    personal = {k: v + 1 if v.dtype.kind == "f" else v + 5 for k, v in global_weights.items()}
    served = {}
    for mix in (1.0, 0.25):
        chain, states = build_client_chain({"personal.method": "ditto", "personal.mix": mix}), {}
        before = chain.personal_weights(global_weights, states)   # no personal model yet: the global one
        assert all(np.array_equal(before[k], v) for k, v in global_weights.items())
        chain.keep_personal(personal, states)
        served[mix] = chain.personal_weights(global_weights, states)
    key = next(k for k, v in global_weights.items() if v.dtype.kind == "f")
    counter = next(k for k, v in global_weights.items() if v.dtype.kind != "f")
    np.testing.assert_allclose(served[1.0][key], personal[key])
    np.testing.assert_allclose(served[0.25][key], global_weights[key] + 0.25, rtol=1e-6)
    assert served[0.25][key].dtype == global_weights[key].dtype
    assert served[0.25][counter] == personal[counter]   # a count is not averaged
    for bad_mix in (0, 1.5):
        with pytest.raises(StepConfigError, match="personal.mix"):
            validate_run_config({"personal.method": "ditto", "personal.mix": bad_mix})


def test_the_proximal_term_holds_the_model_near_its_anchor() -> None:
    charset = named_charset("mini")
    _, lines = synthetic_org_data("three-orgs-mini", 1, "train", 32, 0, charset)
    anchor = {k: torch.from_numpy(np.array(v)) for k, v in _weights().items()}

    def drift(mu: float) -> float:
        model = load_checkpoint(WARM).model
        config = TrainConfig(max_steps=6, batch_size=8, lr=1e-2, warmup_steps=1, schedule="constant", prox_mu=mu,
                             log_every=10**9)
        Trainer(model, charset, EncodedLines(lines, charset), config, anchor=anchor, log=lambda _: None).fit()
        return float(sum(((p.detach() - anchor[n]) ** 2).sum() for n, p in model.named_parameters()))

    free, held = drift(0.0), drift(100.0)
    assert held < 0.5 * free, (held, free)
    with pytest.raises(ValueError, match="anchor"):
        Trainer(load_checkpoint(WARM).model, charset, EncodedLines(lines, charset),
                TrainConfig(max_steps=1, prox_mu=1.0), log=lambda _: None)


def test_ditto_trains_a_personal_model_per_node_evaluates_it_and_exports_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    report, cfg = run_in_process(tmp_path, monkeypatch, rounds=2, **{
        "personal.method": "ditto", "personal.lambda": 0.01, "personal.epochs": 2.0, "lr": 3e-3})
    run_id, out = report["run_id"], cfg.out_path()
    evaluations = [s for s in report["rounds"][-1]["steps"] if s["step"] == "evaluate"]
    assert {s["client"] for s in evaluations} == {"hospital", "bank", "school"}
    # each node scores its personal model (cer) and the global one (global_cer) on its own held-out lines
    assert all(0 <= s["cer"] <= 1 and 0 <= s["global_cer"] <= 1 for s in evaluations)
    assert np.mean([s["cer"] for s in evaluations]) < np.mean([s["global_cer"] for s in evaluations])
    global_model = load_checkpoint(out / "round-2.pt")
    personal = load_node_state(out / "node-state" / "bank.npz", run_id)["ditto"]["personal"]
    assert set(personal) == set(model_weights(global_model.model))
    assert any(not np.allclose(personal[k], v) for k, v in model_weights(global_model.model).items())

    # the node exports its personal model for `fedocr serve`; the provenance says whose it is
    target = tmp_path / "bank-personal"
    assert main(["fl", "export-personal", str(out), "--node", "bank", "--out", str(target), "--round", "2"]) == 0
    exported = load_checkpoint(target.with_suffix(".pt"))
    assert exported.provenance["kind"] == "personal" and exported.provenance["node"] == "bank"
    assert exported.provenance["run_id"] == run_id and exported.provenance["round"] == 2
    np.testing.assert_allclose(model_weights(exported.model)["head.weight"], personal["head.weight"], rtol=1e-6)
    assert target.with_suffix(".onnx").stat().st_size > 0
    assert main(["fl", "export-personal", str(out), "--node", "nobody", "--out", str(target)]) == 1
    assert "no state of run" in capsys.readouterr().err


def test_the_final_table_scores_every_nodes_personal_model_even_one_never_sampled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one round, two of three nodes sampled: the third has no state and serves the global model
    report, _ = run_in_process(tmp_path, monkeypatch, rounds=1, **{
        "aggregate": "backbone", "fraction-train": 0.5, "min-accepted": 2, "baselines": True, "test-lines": 16})
    trained = {c["id"] for c in report["rounds"][0]["clients"] if c["accepted"]}
    assert len(trained) == 2
    clients = report["final"]["clients"]
    assert set(clients) == {"hospital", "bank", "school"}
    assert all(0 <= c["own_test_cer"]["personalized"] <= 1 for c in clients.values())
    assert "personalized" in report["final"]["mean_own_test_cer"]
