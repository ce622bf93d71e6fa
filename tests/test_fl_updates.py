"""The update pipeline's pure steps: deltas, checks, FedAvg's weighted average, sampling."""
from __future__ import annotations

import numpy as np
import pytest

from fedocr.federated.pipeline.aggregate import apply_update, server_momentum, weighted_average
from fedocr.federated.pipeline.checks import check_examples, check_update, l2_norm
from fedocr.federated.pipeline.transforms import aggregated_keys, delta, select
from fedocr.federated.protocol import from_record, to_record
from fedocr.federated.rounds import sample_clients
from fedocr.federated.weights import model_weights
from fedocr.model import CRNN, ModelConfig


def _weights(value: float = 0.0, steps: int = 0) -> dict[str, np.ndarray]:
    return {"conv.weight": np.full((2, 3), value, dtype=np.float32),
            "head.weight": np.full((4,), value, dtype=np.float32),
            "norm.num_batches_tracked": np.array(steps, dtype=np.int64)}


def test_delta_is_local_minus_global_and_keeps_dtypes() -> None:
    d = delta(_weights(1.5, 7), _weights(1.0, 5))
    assert np.allclose(d["conv.weight"], 0.5) and d["conv.weight"].dtype == np.float32
    assert d["norm.num_batches_tracked"] == 2 and d["norm.num_batches_tracked"].dtype == np.int64
    assert all(isinstance(v, np.ndarray) for v in d.values())  # Flower refuses NumPy scalars
    assert d["norm.num_batches_tracked"].shape == ()


def test_fedavg_weights_deltas_by_example_count() -> None:
    a, b = _weights(1.0, 10), _weights(4.0, 40)
    avg = weighted_average([(a, 300), (b, 100)])
    assert np.allclose(avg["conv.weight"], (300 * 1.0 + 100 * 4.0) / 400)
    assert avg["conv.weight"].dtype == np.float32


def test_integer_buffers_average_to_rounded_integers() -> None:
    avg = weighted_average([(_weights(0, 3), 1), (_weights(0, 4), 1)])
    assert avg["norm.num_batches_tracked"].dtype == np.int64
    assert avg["norm.num_batches_tracked"] == 4  # 3.5 rounds half to even
    new = apply_update(_weights(0, 10), avg)
    assert new["norm.num_batches_tracked"] == 14 and new["norm.num_batches_tracked"].dtype == np.int64
    assert isinstance(avg["norm.num_batches_tracked"], np.ndarray) and isinstance(new["norm.num_batches_tracked"], np.ndarray)


def test_update_steps_do_not_mutate_their_inputs() -> None:
    g, u = _weights(1.0, 5), _weights(0.5, 1)
    g_copy = {k: v.copy() for k, v in g.items()}
    u_copy = {k: v.copy() for k, v in u.items()}
    apply_update(g, weighted_average([(u, 3)]))
    delta(u, g)
    for k in g:
        assert np.array_equal(g[k], g_copy[k]) and np.array_equal(u[k], u_copy[k])


def test_apply_update_leaves_unaggregated_keys_alone() -> None:
    g = _weights(1.0)
    update = select(_weights(2.0), aggregated_keys(g, "backbone"))
    new = apply_update(g, update)
    assert np.allclose(new["conv.weight"], 3.0) and np.allclose(new["head.weight"], 1.0)


def test_backbone_aggregation_keeps_the_ctc_head_local() -> None:
    keys = aggregated_keys(model_weights(CRNN(ModelConfig(23, "tiny"))), "backbone")
    assert keys and not any(k.startswith("head.") for k in keys)
    assert any(k.startswith("rnn.") for k in keys) and any(k.startswith("block1.") for k in keys)


def test_update_with_nan_is_rejected() -> None:
    bad = _weights(0.1)
    bad["conv.weight"] = bad["conv.weight"].copy()
    bad["conv.weight"][0, 0] = np.nan
    assert "non-finite" in (check_update(bad, _weights(), max_norm=10.0) or "")
    bad["conv.weight"][0, 0] = np.inf
    assert "non-finite" in (check_update(bad, _weights(), max_norm=10.0) or "")


def test_update_with_wrong_shape_dtype_or_names_is_rejected() -> None:
    ref = _weights()
    wrong_shape = {**_weights(), "conv.weight": np.zeros((3, 2), np.float32)}
    assert "wrong shape for conv.weight" in (check_update(wrong_shape, ref, 10.0) or "")
    wrong_dtype = {**_weights(), "conv.weight": np.zeros((2, 3), np.float64)}
    assert "wrong dtype for conv.weight" in (check_update(wrong_dtype, ref, 10.0) or "")
    missing = {k: v for k, v in _weights().items() if k != "head.weight"}
    assert "missing" in (check_update(missing, ref, 10.0) or "")


def test_update_above_the_norm_bound_is_rejected_and_counters_do_not_count() -> None:
    big = _weights(1.0, steps=10**9)
    assert l2_norm(big) == pytest.approx(np.sqrt(10.0))  # 6 + 4 ones; the int64 counter is left out
    assert check_update(big, _weights(), max_norm=4.0) is None
    assert "above bound" in (check_update(big, _weights(), max_norm=3.0) or "")


def test_sampling_is_seeded_and_distinct() -> None:
    nodes = [11, 5, 42, 7, 9]
    a = sample_clients(nodes, 3, np.random.default_rng([0, 1]))
    assert a == sample_clients(list(reversed(nodes)), 3, np.random.default_rng([0, 1]))
    assert len(set(a)) == 3 and set(a) <= set(nodes)
    assert sample_clients(nodes, 9, np.random.default_rng(0)) == sorted(nodes)


def test_weights_survive_a_flower_record_round_trip_with_scalar_buffers() -> None:
    w = model_weights(CRNN(ModelConfig(23, "tiny")))
    back = from_record(to_record(w))
    assert back.keys() == w.keys()
    for k in w:
        assert back[k].shape == w[k].shape and back[k].dtype == w[k].dtype and np.array_equal(back[k], w[k])


def test_example_counts_above_the_bound_are_rejected_with_the_reason() -> None:
    assert check_examples(400, max_examples=1000) is None
    assert "above the bound max-examples=1000" in (check_examples(10**9, max_examples=1000) or "")
    assert "no training examples" in (check_examples(0, max_examples=1000) or "")


def test_server_learning_rate_scales_parameters_but_not_batchnorm_statistics() -> None:
    g = {"conv.weight": np.ones(3, np.float32), "norm.running_var": np.full(3, 1.0, np.float32),
         "norm.num_batches_tracked": np.array(10, np.int64)}
    update = {"conv.weight": np.full(3, 0.5, np.float32), "norm.running_var": np.full(3, -0.6, np.float32),
              "norm.num_batches_tracked": np.array(4, np.int64)}
    new = apply_update(g, update, server_lr=2.0)
    assert np.allclose(new["conv.weight"], 2.0)
    assert np.allclose(new["norm.running_var"], 0.4)  # 2x would make the variance negative
    assert new["norm.num_batches_tracked"] == 14


def test_server_momentum_accumulates_parameter_steps_but_not_statistics(tmp_path) -> None:
    from fedocr.federated.state import ServerState

    update = {"conv.weight": np.full(3, 1.0, np.float32), "norm.running_var": np.full(3, -0.5, np.float32),
              "norm.num_batches_tracked": np.array(4, np.int64)}
    first = server_momentum(None, update, beta=0.9)
    second = server_momentum(first, update, beta=0.9)
    assert np.allclose(first["conv.weight"], 1.0) and np.allclose(second["conv.weight"], 1.9)
    assert np.allclose(second["norm.running_var"], -0.5) and second["norm.num_batches_tracked"] == 4
    assert np.allclose(update["conv.weight"], 1.0) and np.allclose(first["conv.weight"], 1.0)  # inputs untouched
    head_kept_local = server_momentum(second, {"conv.weight": update["conv.weight"]}, beta=0.9)
    assert head_kept_local.keys() == {"conv.weight"}                     # backbone-only updates have fewer keys
    # The velocity is strategy state: it survives a server restart with the weights.
    state = ServerState.fresh({"conv.weight": np.zeros(3, np.float32)}, "v1")
    state.steps = {"fedavgm": {"velocity": second}}
    state.save(tmp_path)
    loaded = ServerState.load(tmp_path)
    assert loaded is not None and "velocity" in loaded.steps["fedavgm"]
    velocity = loaded.steps["fedavgm"]["velocity"]
    assert np.allclose(velocity["conv.weight"], 1.9) and velocity["norm.num_batches_tracked"] == 4


def test_sampling_returns_exact_64_bit_node_ids() -> None:
    # Flower's node ids are unsigned 64-bit; a list mixing ids above and below 2**63 once went
    # through float64 and came back as ids no node has (every message of a 100-node round refused).
    nodes = [385492177607323647, 10105359061687707649, 5, 2**64 - 1, 2**63 + 1]
    for seed in range(20):
        picked = sample_clients(nodes, 2, np.random.default_rng(seed))
        assert set(picked) <= set(nodes), picked
