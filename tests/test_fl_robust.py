"""Malicious and broken nodes: robust aggregation against hand-computed examples, refusals of
settings that cannot work, the attack steps, data poisoning, and a ten-branch federation in which
a sign-flipping and a boosted node are down-weighted while the model still improves."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedocr.data.organisations import FEDERATIONS, get_federation, named_charset, synthetic_org_data
from fedocr.federated.config import ConfigError, FlConfig
from fedocr.federated.pipeline.aggregate import FedAvg
from fedocr.federated.pipeline.attacks import Attack, AttackConfig
from fedocr.federated.pipeline.build import build_client_chain, build_server_chain
from fedocr.federated.pipeline.checks import AdaptiveNormBound, CheckConfig, capped_examples, l2_norm
from fedocr.federated.pipeline.robust import (RECOMMENDED, RobustAggregate, RobustConfig, coordinate_median,
                                              krum_scores, trimmed_mean, trust_weighted, twin_cosines)
from fedocr.federated.pipeline.types import StepContext, Update
from fedocr.federated.sim.poison import backdoored, poisoned, rewritten

WARM = Path(__file__).parent / "data" / "tiny-mini-warm.pt"


def _ctx(reference: dict | None = None, state: dict | None = None, rnd: int = 1) -> StepContext:
    return StepContext(rnd, np.random.default_rng(0), {} if state is None else state, reference or {})


def _updates(rows: list[list[float]], examples: int = 10) -> list[Update]:
    return [Update(f"n{i}", {"w": np.array(row, np.float32)}, examples) for i, row in enumerate(rows)]


ROWS = [[1, 10], [2, 20], [3, 30], [4, 40], [100, -100]]


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    step, kept, dots = trimmed_mean([u.tensors for u in _updates(ROWS)], 1)
    # column 0: 1 and 100 dropped -> mean(2, 3, 4); column 1: -100 and 40 dropped -> mean(10, 20, 30)
    assert step["w"].tolist() == [3.0, 20.0] and step["w"].dtype == np.float32
    assert kept.tolist() == [0.5, 1.0, 1.0, 0.5, 0.0]
    # what each kept value adds to the mean (value / 3), dotted with the result [3, 20]
    assert dots.tolist() == pytest.approx([10 * 20 / 3, (2 * 3 + 20 * 20) / 3, (3 * 3 + 30 * 20) / 3, 4 * 3 / 3, 0])
    with pytest.raises(ValueError, match="cannot drop 3"):
        trimmed_mean([u.tensors for u in _updates(ROWS)], 3)


def test_the_coordinate_median_of_odd_and_even_counts() -> None:
    assert coordinate_median([u.tensors for u in _updates(ROWS)])[0]["w"].tolist() == [3.0, 20.0]
    assert coordinate_median([u.tensors for u in _updates(ROWS[:4])])[0]["w"].tolist() == [2.5, 25.0]


def test_krum_and_multi_krum_keep_the_updates_closest_to_their_neighbours() -> None:
    updates = _updates([[0], [1], [2], [3], [100]])
    # f=1, n=5: each score sums the 2 smallest squared distances to the others.
    assert krum_scores([u.tensors for u in updates], 1).tolist() == [5, 2, 2, 5, 9409 + 9604]
    krum = RobustAggregate(RobustConfig(rule="krum", f=1, min_accepted=5))(updates, _ctx())
    assert krum.step["w"].tolist() == [1.0] and set(krum.left_out) == {"n0", "n2", "n3", "n4"}
    multi = RobustAggregate(RobustConfig(rule="multi-krum", f=1, min_accepted=5))(updates, _ctx())
    assert multi.step["w"].tolist() == [1.5] and list(multi.left_out) == ["n4"]  # mean of 0, 1, 2, 3
    assert multi.shares == {"n0": 0.25, "n1": 0.25, "n2": 0.25, "n3": 0.25, "n4": 0.0}


def test_fltrust_weighs_by_cosine_to_the_servers_update_and_rescales_to_its_norm() -> None:
    root = {"w": np.array([3.0, 4.0], np.float32)}                    # the server's update, norm 5
    updates = _updates([[6, 8], [0, 1], [-3, -4], [4, -3]])
    # trust = max(0, cos): 1, 0.8, 0 (opposed), 0 (orthogonal); n0 and n1 rescaled to norm 5: [3, 4] and [0, 5]
    step, weights = trust_weighted([u.tensors for u in updates], root)
    assert weights.tolist() == pytest.approx([1 / 1.8, 0.8 / 1.8, 0, 0])
    assert step["w"].tolist() == pytest.approx([3 / 1.8, (4 + 0.8 * 5) / 1.8])
    ctx = _ctx()
    ctx.server_update = lambda: root
    result = RobustAggregate(RobustConfig(rule="trust"))(updates, ctx)
    assert result.step["w"].tolist() == pytest.approx(step["w"].tolist())
    assert sorted(result.left_out) == ["n2", "n3"] and "cosine -1" in result.left_out["n2"]
    scores = {r.client: r.info for r in ctx.notes if r.step == "score"}
    assert scores["n2"]["flagged"] and not scores["n0"]["flagged"]
    assert sum(s["contribution"] for s in scores.values()) == pytest.approx(1.0)
    nobody, _ = trust_weighted([u.tensors for u in updates[2:]], root)   # nobody trusted: the model stays
    assert nobody["w"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="root lines"):
        RobustAggregate(RobustConfig(rule="trust"))(updates, _ctx())


def test_clipping_scales_down_to_a_multiple_of_the_median_norm_and_scores_every_node() -> None:
    updates = [Update(f"n{i}", {"w": np.array([x], np.float32)}, 10) for i, x in enumerate([1, 2, 3, 4, 100])]
    ctx = _ctx()
    result = RobustAggregate(RobustConfig(rule="fedavg", clip_median=2.0))(updates, ctx)
    assert result.step["w"].tolist() == [pytest.approx((1 + 2 + 3 + 4 + 6) / 5)]  # 100 clipped to 2 x median 3
    scores = {r.client: r.info for r in ctx.notes if r.step == "score"}
    assert scores["n4"]["verdict"] == "clipped" and scores["n4"]["clip"] == pytest.approx(0.06)
    assert scores["n4"]["norm"] == 100 and scores["n0"]["verdict"] == "kept" and scores["n0"]["cosine"] == 1.0
    assert [r.info for r in ctx.notes if r.client == "*"] == [{"clip_bound": 6.0, "median_norm": 3.0}]


def test_trimmed_mean_down_weights_a_sign_flipped_node() -> None:
    rng = np.random.default_rng(1)
    honest = [rng.normal(1.0, 0.3, size=50) for _ in range(6)]
    updates = _updates([*(h.tolist() for h in honest), (-honest[0]).tolist()])
    ctx = _ctx()
    result = RobustAggregate(RobustConfig(rule="trimmed-mean", f=1, min_accepted=3))(updates, ctx)
    scores = {r.client: r.info for r in ctx.notes if r.step == "score"}
    assert scores["n6"]["verdict"] == "opposed" and scores["n6"]["flagged"] and scores["n6"]["cosine"] < 0
    assert result.shares["n6"] < 0.05 and all(result.shares[f"n{i}"] > 0.1 for i in range(6))
    assert sum(result.shares.values()) == pytest.approx(1.0)
    assert sum(s["contribution"] for s in scores.values()) == pytest.approx(1.0, abs=1e-6)
    assert scores["n6"]["contribution"] == 0                      # every value of it was trimmed


def test_drop_opposed_leaves_out_a_sign_flipped_node_the_trimmed_mean_kept_in_part() -> None:
    # Two coordinates; five honest updates and one flipped. Per coordinate the flipped value is
    # not always an extreme, so the trimmed mean (f=1) keeps some of it; it still opposes the step.
    rows = [[1.0, 1.0], [1.2, 0.8], [0.8, 1.2], [1.1, 0.9], [0.9, 1.1], [-3.0, 0.95]]
    plain = RobustAggregate(RobustConfig(rule="trimmed-mean", f=1, min_accepted=3))(_updates(rows), _ctx())
    ctx = _ctx()
    dropped = RobustAggregate(RobustConfig(rule="trimmed-mean", f=1, min_accepted=3, drop_opposed=True))(
        _updates(rows), ctx)
    assert plain.shares["n5"] > 0 and "n5" not in plain.left_out
    assert dropped.shares["n5"] == 0 and "opposed to the trimmed-mean step" in dropped.left_out["n5"]
    # ...and the step is the trimmed mean of the five honest rows: (1.0 + 1.1 + 0.9) / 3 per coordinate
    assert dropped.step["w"].tolist() == pytest.approx([1.0, 1.0])
    scores = {r.client: r.info for r in ctx.notes if r.step == "score"}
    assert scores["n5"]["verdict"] == "left out" and scores["n5"]["flagged"]
    assert not any(scores[f"n{i}"]["flagged"] for i in range(5))


def test_drop_opposed_keeps_everyone_when_too_few_would_remain_and_refuses_trust() -> None:
    rows = [[1.0, 1.0], [1.0, 0.9], [-1.0, -1.0]]      # dropping one would leave 2 < 2f + 1 = 3
    result = RobustAggregate(RobustConfig(rule="trimmed-mean", f=1, min_accepted=3, drop_opposed=True))(
        _updates(rows), _ctx())
    assert not result.left_out
    with pytest.raises(ConfigError, match="robust.drop-opposed"):
        FlConfig.from_run_config({"robust.rule": "trust", "robust.drop-opposed": True})
    # On its own (FedAvg) it is a robust aggregation too: it needs each node's update.
    alone = FlConfig.from_run_config({"robust.drop-opposed": True}).to_run_config()
    assert isinstance(build_server_chain(alone).aggregator, RobustAggregate)
    with pytest.raises(ConfigError, match="drop-opposed"):
        FlConfig.from_run_config({"robust.drop-opposed": True, "secure.method": "secagg+"})


def test_colluders_sending_the_same_update_are_left_out_and_the_trimmed_mean_runs_on_the_rest() -> None:
    rng = np.random.default_rng(3)
    honest = [rng.normal(1.0, 1.0, size=200) for _ in range(5)]
    crafted = rng.normal(0.5, 1.0, size=200)   # inside the honest spread: a trimmed mean keeps much of it
    rows = [*(h.tolist() for h in honest), crafted.tolist(), crafted.tolist()]
    config = RobustConfig(rule="trimmed-mean", f=2, min_accepted=5, drop_opposed=True, collusion_cosine=0.99)
    ctx = _ctx()
    result = RobustAggregate(config)(_updates(rows), ctx)
    assert set(result.left_out) == {"n5", "n6"} and "matches n6's around the round's median" in result.left_out["n5"]
    assert result.shares["n5"] == result.shares["n6"] == 0
    # ...and the step is the trimmed mean of the honest five alone
    expected = trimmed_mean([{"w": h.astype(np.float32)} for h in honest], 2)[0]["w"]
    assert result.step["w"] == pytest.approx(expected)
    scores = {r.client: r.info for r in ctx.notes if r.step == "score"}
    assert scores["n5"]["twin_cosine"] == pytest.approx(1.0) and scores["n5"]["flagged"]
    assert max(scores[f"n{i}"]["twin_cosine"] for i in range(5)) < 0.9
    assert not any(scores[f"n{i}"]["flagged"] for i in range(5))
    # Without the check the pair is not left out, and the trimmed mean keeps part of it.
    plain = RobustAggregate(RobustConfig(rule="trimmed-mean", f=2, min_accepted=5))(_updates(rows), _ctx())
    assert not plain.left_out and plain.shares["n5"] > 0


def test_colluders_are_kept_and_flagged_when_leaving_them_out_would_drop_below_the_participation_threshold() -> None:
    rows = [[1.0, 0.0, 0.2], [0.0, 1.0, 0.1], [0.3, 0.3, 1.0], [-1.0, 2.0, 0.5], [-1.0, 2.0, 0.5]]
    config = RobustConfig(rule="trimmed-mean", f=1, min_accepted=4, collusion_cosine=0.99)
    ctx = _ctx()
    assert not RobustAggregate(config)(_updates(rows), ctx).left_out
    scores = {r.client: r.info for r in ctx.notes if r.step == "score"}
    assert scores["n3"]["verdict"] == scores["n4"]["verdict"] == "colluding" and scores["n3"]["flagged"]
    assert any(r.info.get("colluders_kept") == ["n3", "n4"] for r in ctx.notes)
    assert set(RobustAggregate(replace(config, min_accepted=3))(_updates(rows), _ctx()).left_out) == {"n3", "n4"}
    # drop-opposed alike: n2 opposes the step, but leaving it out would leave 3 < min-accepted = 4
    opposed = [[1.0, 1.0], [1.2, 0.8], [0.8, 1.2], [-3.0, -3.0]]
    kept = RobustAggregate(RobustConfig(rule="trimmed-mean", f=1, min_accepted=4, drop_opposed=True))(
        _updates(opposed), _ctx())
    assert not kept.left_out
    assert RobustAggregate(RobustConfig(rule="trimmed-mean", f=1, min_accepted=3, drop_opposed=True))(
        _updates(opposed), _ctx()).left_out.keys() == {"n3"}


def test_twin_cosines_remove_what_every_node_shares_and_keep_what_colluders_share() -> None:
    rng = np.random.default_rng(0)
    common = rng.normal(size=(64, 9)) * 10           # the shared descent, far larger than any node's own part
    honest = [{"conv.weight": (common + rng.normal(size=common.shape)).astype(np.float32)} for _ in range(6)]
    crafted = {"conv.weight": (common + rng.normal(size=common.shape)).astype(np.float32)}
    raw = _flat_cos(honest[0], honest[1])
    cos = twin_cosines([*honest, crafted, dict(crafted)])
    assert raw > 0.98 and cos[0, 1] < 0.5                   # alike raw, unlike around the median
    assert cos[6, 7] == pytest.approx(1.0) and cos[:6, 6].max() < 0.5
    # BatchNorm's running statistics are no direction: they do not count
    with_stats = [{**t, "bn.running_var": np.full(4, i, np.float32)} for i, t in enumerate([*honest, crafted, crafted])]
    assert np.allclose(twin_cosines(with_stats), cos)


def _flat_cos(a: dict, b: dict) -> float:
    x, y = a["conv.weight"].ravel(), b["conv.weight"].ravel()
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_a_collusion_threshold_that_would_catch_honest_branches_is_refused() -> None:
    with pytest.raises(ConfigError, match="robust.collusion-cosine"):
        FlConfig.from_run_config({"robust.collusion-cosine": 0.5})
    with pytest.raises(ConfigError, match="collusion-cosine"):
        FlConfig.from_run_config({"robust.collusion-cosine": 0.99, "secure.method": "secagg+"})
    alone = FlConfig.from_run_config({"robust.collusion-cosine": 0.99}).to_run_config()
    assert isinstance(build_server_chain(alone).aggregator, RobustAggregate)


def test_the_builder_picks_the_aggregator_from_the_run_config() -> None:
    assert isinstance(build_server_chain(FlConfig().to_run_config()).aggregator, FedAvg)
    chain = build_server_chain(FlConfig.from_run_config({"min-accepted": 5, **RECOMMENDED}).to_run_config())
    assert isinstance(chain.aggregator, RobustAggregate) and chain.aggregator.config.rule == "trimmed-mean"
    attacked = FlConfig.from_run_config({"federation": "ten-branches-mini", "attack.nodes": "bank-2:boost",
                                         "compress.top-k": 0.1}).to_run_config()
    assert [s.name for s in build_client_chain(attacked).steps] == ["attack", "top-k"]  # crafted, then encoded


def test_rules_that_need_more_updates_than_a_round_may_have_are_refused_at_start() -> None:
    for settings, why in (({"robust.rule": "krum", "min-accepted": 4}, "needs at least 5 updates"),
                          ({"robust.rule": "multi-krum", "robust.f": 2, "min-accepted": 6}, "needs at least 7"),
                          ({"robust.rule": "trimmed-mean", "robust.f": 2, "min-accepted": 4}, "2f \\+ 1"),
                          ({"robust.rule": "multi-krum", "min-accepted": 5, "robust.multi-krum-m": 5}, "multi-krum-m"),
                          ({"robust.clip-median": 0.5}, "robust.clip-median"), ({"robust.rule": "mean"}, "robust.rule"),
                          ({"attack.nodes": "bank-1:boost+sign-flip"}, "at most one update attack"),
                          ({"attack.nodes": "bank-7:boost", "federation": "ten-branches-mini"}, "no node bank-7")):
        with pytest.raises(ConfigError, match=why):
            FlConfig.from_run_config(settings)
    FlConfig.from_run_config({"robust.rule": "krum", "min-accepted": 5})
    FlConfig.from_run_config({"robust.rule": "trimmed-mean", "robust.f": 2, "min-accepted": 5})


def _attacked(spec: str, client: str, delta: dict, reference: dict | None = None, state: dict | None = None,
              rnd: int = 1, bound: float = 50.0) -> Update:
    step = Attack(AttackConfig(nodes=spec, scale=10.0, max_update_norm=bound))
    return step(Update(client, delta, 10), _ctx(reference, state, rnd))


def test_update_attacks_craft_their_update_and_stay_under_the_norm_bound() -> None:
    delta = {"w": np.array([3.0, 4.0], np.float32), "bn.num_batches_tracked": np.array(2, np.int64)}
    assert _attacked("a:sign-flip", "a", delta).tensors["w"].tolist() == [-3.0, -4.0]
    assert _attacked("a:sign-flip", "b", delta).tensors is delta              # an honest node is untouched
    assert _attacked("a:boost", "a", delta, bound=1e4).tensors["w"].tolist() == [30.0, 40.0]
    boosted = _attacked("a:boost", "a", delta, bound=20.0)
    assert l2_norm(boosted.tensors) == pytest.approx(19.8) and boosted.records[-1].info["attack"] == "boost"
    assert l2_norm(_attacked("a:noise", "a", delta, bound=1e4).tensors) == pytest.approx(50.0, rel=1e-5)
    reference = {"w": np.array([1.0, -2.0], np.float32), "bn.num_batches_tracked": np.array(7, np.int64)}
    one, two = (_attacked("a:collude,b:collude", c, {k: v * i for k, v in delta.items()}, reference)
                for i, c in ((1, "a"), (3, "b")))
    assert np.array_equal(one.tensors["w"], two.tensors["w"]) and l2_norm(one.tensors) == pytest.approx(49.5)
    assert one.tensors["w"][0] < 0 < one.tensors["w"][1]                     # towards w = 0


def test_a_free_rider_sends_zeros_or_replays_its_first_delta() -> None:
    delta = {"w": np.array([3.0, 4.0], np.float32)}
    assert _attacked("a:free-rider", "a", delta).tensors["w"].tolist() == [0.0, 0.0]
    state: dict = {}
    step = Attack(AttackConfig(nodes="a:free-rider", from_round=2))
    assert step(Update("a", delta, 10), _ctx(state=state, rnd=1)).tensors is delta   # honest, remembered
    replay = step(Update("a", {"w": np.array([9.0, 9.0], np.float32)}, 10), _ctx(state=state, rnd=3))
    assert replay.tensors["w"].tolist() == [3.0, 4.0] and replay.examples == 10


def test_a_claim_far_above_the_rounds_median_counts_only_as_a_multiple_of_it() -> None:
    assert capped_examples([100, 120, 10**6], 10) == [100, 120, 1200] and capped_examples([5, 10**6], 0) == [5, 10**6]
    updates = [Update("a", {"w": np.array([1.0], np.float32)}, 100), Update("b", {"w": np.array([2.0], np.float32)}, 120),
               Update("liar", {"w": np.array([50.0], np.float32)}, 10**6)]
    ctx = _ctx()
    result = FedAvg(examples_ratio=10)(updates, ctx)
    assert result.step["w"][0] == pytest.approx((100 * 1 + 120 * 2 + 1200 * 50) / 1420)   # not ~50
    assert [r.info for r in ctx.notes] == [{"claimed_examples": 10**6, "counted_examples": 1200}]
    assert "capped at 10x the median" in build_server_chain(FlConfig().to_run_config()).aggregator.describe()
    with pytest.raises(ConfigError, match="max-examples-ratio"):
        FlConfig.from_run_config({"max-examples-ratio": 0.5})


def test_the_adaptive_norm_bound_follows_recent_honest_norms_and_rejects_a_boosted_update() -> None:
    step, state = AdaptiveNormBound(CheckConfig()), {}   # 10x the median of the last rounds' norms

    def sent(norm: float, rnd: int) -> Update:
        return step(Update("n", {"w": np.array([norm, 0.0], np.float32)}, 10), _ctx(state=state, rnd=rnd))

    assert all(sent(x, 1).rejected is None for x in (1.0, 2.0, 500.0))   # no history yet: nothing to compare
    assert sent(15.0, 2).rejected is None                # median of round 1's norms 2 -> bound 20 (not this round's)
    assert sent(500.0, 2).rejected is not None and "above 10 x the median of recent norms (20)" in sent(21.0, 2).rejected
    assert sent(80.0, 3).rejected is None                # rounds 1-2 passed 1, 2, 500, 15: median 8.5 -> bound 85
    assert sent(0.1, 9).rejected is None and sent(500.0, 9).rejected is None   # rounds 1-2 fell out of the window
    with pytest.raises(ConfigError, match="max-norm-ratio"):
        FlConfig.from_run_config({"max-norm-ratio": 1.5})
    names = [s.name for s in build_server_chain(FlConfig().to_run_config()).screen]
    assert names == ["check", "norm-bound", "replay"]


def test_data_attacks_poison_only_the_named_node_and_the_backdoor_rewrites_digits() -> None:
    charset = named_charset("mini")
    name, lines = synthetic_org_data("ten-branches-mini", 3, "train", 8, 0, charset)
    assert name == "bank-1" and len(lines) == 16                           # size 2 x lines-per-client
    assert poisoned({"attack.nodes": "bank-2:backdoor"}, name, lines, 0) is lines
    shuffled = poisoned({"attack.nodes": "bank-1:label-shuffle"}, name, lines, 0)
    assert sorted(shuffled.texts()) == sorted(lines.texts())
    assert sum(a != b for a, b in zip(shuffled.texts(), lines.texts())) >= len(lines) - 2
    back = poisoned({"attack.nodes": "bank-1:backdoor"}, name, lines, 0)
    changed = [i for i in range(len(lines)) if back[i][1] != lines[i][1]]
    assert changed and all(back[i][1] == rewritten(lines[i][1]) and back[i][0][2, 2] == 0 for i in changed)
    assert rewritten("金额38.50") == "金额61.49"
    every = backdoored(lines, np.random.default_rng(0), every=True)   # a test set: every line with a digit
    with_digit = len([t for t in lines.texts() if any(c.isdigit() for c in t)])
    assert len(every.changed) == with_digit
    # attack.poison-rate: the share of its lines with a digit that the attacker stamps (half by default)
    assert len(back.changed) == round(0.5 * with_digit)
    assert len(poisoned({"attack.nodes": "bank-1:backdoor", "attack.poison-rate": 1.0}, name, lines, 0).changed) \
        == with_digit
    with pytest.raises(ConfigError, match="attack.poison-rate"):
        FlConfig.from_run_config({"attack.poison-rate": 0.0})


def test_ten_branches_split_the_domains_into_uneven_nodes_and_keep_the_old_federations() -> None:
    ten = get_federation("ten-branches")
    assert len(ten.nodes) == 10 and {n.org for n in ten.nodes} == {"hospital", "bank", "school", "logistics"}
    assert len({n.size for n in ten.nodes}) > 1 and not ten.mini and get_federation("ten-branches-mini").mini
    assert FEDERATIONS["three-orgs"].names == ("hospital", "bank", "school")
    assert all(n.size == 1 for f in ("three-orgs", "four-orgs", "three-orgs-mini") for n in FEDERATIONS[f].nodes)


@pytest.mark.slow
def test_a_sign_flipping_and_a_boosted_branch_are_down_weighted_and_the_model_still_improves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fl_inprocess import InProcessGrid, task_identity

    from fedocr.cli import main

    from fedocr.data.organisations import public_lines
    from fedocr.federated.rounds import FederatedServer
    from fedocr.federated.validate import validate
    from fedocr.model import load_checkpoint

    task_identity(monkeypatch)
    torch.set_num_threads(1)
    cfg = FlConfig.from_run_config({
        "federation": "ten-branches-mini", "charset": "mini", "initial-model": str(WARM), "num-rounds": 2,
        "lines-per-client": 8, "val-lines": 32, "fraction-train": 1.0, "min-accepted": 5, "max-update-norm": 1e4,
        "out-dir": str(tmp_path / "out"), "store": str(tmp_path / "runs.db"), "baselines": False,
        "attack.nodes": "bank-2:sign-flip,school-3:boost", **RECOMMENDED})
    report = FederatedServer(cfg, printer=lambda _: None).run(InProcessGrid(cfg.to_run_config(), 10))  # type: ignore[arg-type]
    start = load_checkpoint(WARM)
    _, loss0 = validate(start.model, start.charset, public_lines("ten-branches-mini", 32, 0, start.charset.version,
                                                                 start.charset))
    assert [r["applied"] for r in report["rounds"]] == [True, True]
    assert report["rounds"][-1]["val_loss"] < loss0
    for r in report["rounds"]:
        scores = {s["client"]: s for s in r["steps"] if s["step"] == "score"}
        assert len(scores) == 10
        honest = [s for c, s in scores.items() if c not in ("bank-2", "school-3")]
        assert scores["bank-2"]["flagged"] and scores["bank-2"]["cosine"] < 0 < min(s["cosine"] for s in honest)
        assert scores["bank-2"]["contribution"] < min(s["contribution"] for s in honest)
        assert scores["school-3"]["verdict"] == "clipped" and scores["school-3"]["clip"] < 0.5
        assert scores["school-3"]["contribution"] < sorted(s["contribution"] for s in honest)[len(honest) // 2]
        assert not any(s["flagged"] for s in honest)
        assert max(s["twin_cosine"] for s in scores.values()) < RECOMMENDED["robust.collusion-cosine"]
        # the round counts every update that passed the checks; the node's record says the rule left it out
        by_id = {c["id"]: c for c in r["clients"]}
        assert r["accepted"] == 10 and by_id["bank-2"]["accepted"] == (scores["bank-2"]["verdict"] != "left out")
    capsys.readouterr()
    assert main(["fl", "show", report["run_id"], "--store", str(tmp_path / "runs.db")]) == 0
    shown = capsys.readouterr().out
    # The recommended rule leaves the flipped branch out (robust.drop-opposed) and says why.
    assert "bank-2       flagged: left out" in shown and "school-3     flagged: clipped" in shown
    assert "rejected: left out: opposed to the trimmed-mean step" in shown
    assert "accepted 10/10 (1 left out by the aggregator)" in shown


def test_fltrust_gives_a_sign_flipping_branch_no_trust_on_the_servers_root_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fl_inprocess import InProcessGrid, task_identity

    from fedocr.federated.rounds import FederatedServer

    task_identity(monkeypatch)
    torch.set_num_threads(1)
    cfg = FlConfig.from_run_config({
        "federation": "ten-branches-mini", "charset": "mini", "initial-model": str(WARM), "num-rounds": 1,
        "lines-per-client": 8, "val-lines": 32, "fraction-train": 1.0, "min-accepted": 3,
        "out-dir": str(tmp_path / "out"), "store": str(tmp_path / "runs.db"), "baselines": False,
        "attack.nodes": "bank-2:sign-flip,school-3:boost", "robust.rule": "trust", "robust.root-lines": 32})
    server = FederatedServer(cfg, printer=lambda _: None)
    report = server.run(InProcessGrid(cfg.to_run_config(), 10))  # type: ignore[arg-type]
    rnd = report["rounds"][0]
    scores = {s["client"]: s for s in rnd["steps"] if s["step"] == "score"}
    assert rnd["applied"] and scores["bank-2"]["verdict"] == "left out" and scores["bank-2"]["weight"] == 0
    honest = [s for c, s in scores.items() if c not in ("bank-2", "school-3")]
    # the boosted branch is rescaled to the server's norm: it weighs no more than an honest one
    assert scores["school-3"]["weight"] <= max(s["weight"] for s in honest)
    assert sum(s["weight"] > 0 for s in honest) >= 6
    assert [s for s in rnd["steps"] if s["step"] == "robust" and s["client"] == "*"][0]["root_norm"] > 0


@pytest.mark.slow
def test_flagged_branches_are_quarantined_and_the_operator_readmits_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """bank-2 (sign flip) and school-3 (boost) are flagged in round 1 and quarantined (after=1): round 2
    samples the 8 others; the operator re-admits bank-2 with `fedocr fl readmit` after round 2, so
    round 3 samples it again, flags it again and quarantines it again; school-3 stays out."""
    from fl_inprocess import InProcessGrid, task_identity

    from fedocr.cli import main
    from fedocr.federated.rounds import FederatedServer

    task_identity(monkeypatch)
    torch.set_num_threads(1)
    store = tmp_path / "runs.db"
    cfg = FlConfig.from_run_config({
        "federation": "ten-branches-mini", "charset": "mini", "initial-model": str(WARM), "num-rounds": 3,
        "lines-per-client": 8, "val-lines": 32, "fraction-train": 1.0, "min-accepted": 5, "max-update-norm": 1e4,
        "out-dir": str(tmp_path / "out"), "store": str(store), "baselines": False, "run-name": "q",
        "attack.nodes": "bank-2:sign-flip,school-3:boost", "quarantine.after": 1, "quarantine.window": 2,
        **RECOMMENDED})
    codes: list[int] = []

    def operator(line: str) -> None:   # between rounds 2 and 3, as an operator would from a shell
        if line.startswith("round 2/3"):
            codes.append(main(["fl", "readmit", "q", "hospital-1", "--store", str(store)]))   # never quarantined
            codes.append(main(["fl", "readmit", "q", "bank-2", "--store", str(store)]))

    report = FederatedServer(cfg, printer=operator).run(InProcessGrid(cfg.to_run_config(), 10))  # type: ignore[arg-type]
    assert codes == [2, 0]
    r1, r2, r3 = report["rounds"]
    held_1 = {s["client"] for s in r1["steps"] if s["step"] == "quarantine" and "quarantined" in s}
    assert held_1 == {"bank-2", "school-3"}
    assert r2["sampled"] == 8 and {c["id"] for c in r2["clients"]}.isdisjoint(held_1)
    assert [s["excluded"] for s in r2["steps"] if "excluded" in s] == [["bank-2", "school-3"]]
    assert [s["client"] for s in r3["steps"] if "readmitted" in s] == ["bank-2"]
    assert "bank-2" in {c["id"] for c in r3["clients"]} and "school-3" not in {c["id"] for c in r3["clients"]}
    assert {s["client"] for s in r3["steps"] if "quarantined" in s} == {"bank-2"}   # flagged again, held again
    assert all(r["applied"] for r in report["rounds"])
    capsys.readouterr()
    assert main(["fl", "show", "q", "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "not sampled: bank-2, school-3" in shown and "re-admitted by the operator" in shown


def test_quarantine_needs_the_robust_rules_flags_and_sane_limits() -> None:
    from fedocr.federated.pipeline.build import validate_run_config
    from fedocr.federated.pipeline.settings import StepConfigError

    for settings, key in [({"quarantine.after": 2}, "quarantine.after"),
                          ({"quarantine.after": 6, **RECOMMENDED, "min-accepted": 5}, "quarantine.after"),
                          ({"quarantine.window": 0, **RECOMMENDED, "min-accepted": 5}, "quarantine.window")]:
        with pytest.raises(StepConfigError, match=key.replace(".", r"\.")):
            validate_run_config(settings)


def test_quarantine_counts_flags_only_within_its_window_and_readmission_clears_them() -> None:
    from fedocr.federated.pipeline.quarantine import Quarantine, QuarantineConfig
    from fedocr.federated.pipeline.types import StepRecord

    step, state = Quarantine(QuarantineConfig(after=2, window=3)), {}

    def flag(node: str, verdict: str = "opposed") -> StepRecord:
        return StepRecord("score", node, {"flagged": True, "verdict": verdict})

    assert step.review([flag("a"), StepRecord("score", "b", {"flagged": False})], 1, state) == []
    assert step.review([], 2, state) == [] and step.review([], 3, state) == []
    assert step.review([flag("a", "clipped")], 4, state) == []    # round 1's flag fell out of the window
    [held] = step.review([flag("a", "left out")], 5, state)       # rounds 4 and 5: 2 of the last 3
    assert held.client == "a" and "round 4: clipped, round 5: left out" in held.info["quarantined"]
    assert step.held(state) == {"a": held.info["quarantined"]}
    assert step.review([flag("a")], 6, state) == []               # already held: nothing new
    assert step.readmit("b", state) is None                        # not held: nothing to do
    assert step.readmit("a", state).info == {"readmitted": "re-admitted by the operator"}
    assert step.held(state) == {} and step.review([flag("a")], 7, state) == []   # a clean history
