"""Each node's contribution: leave-one-out and (GTG-)Shapley values against hand-computed games, the
interval's coverage, truncation's savings, config refusals, a stand-in secure-aggregation step that
disables it, and a real in-process federation in which a free rider ranks last."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pytest

from fedocr.federated.config import ConfigError, FlConfig
from fedocr.federated.pipeline import build
from fedocr.federated.pipeline.aggregate import FedAvg
from fedocr.federated.pipeline.build import Feature, build_server_chain, describe
from fedocr.federated.pipeline.contribution import (Evaluations, cumulate, exact_shapley, gtg_shapley, leave_one_out,
                                                    shapley, t_quantile)
from fedocr.federated.pipeline.settings import StepConfig, StepConfigError
from fedocr.federated.pipeline.types import StepContext, StepRecord, Update

# A 3-player game: v(empty) = 0, singletons 1, 2, 3; pairs: ab 4, ac 4, bc 5; all three 9.
TABLE = {"": 0.0, "a": 1.0, "b": 2.0, "c": 3.0, "ab": 4.0, "ac": 4.0, "bc": 5.0, "abc": 9.0}
# By hand: phi_a = 1/3 (v(a) - 0) + 1/6 (v(ab) - v(b)) + 1/6 (v(ac) - v(c)) + 1/3 (v(abc) - v(bc))
#                = 1/3 + 2/6 + 1/6 + 4/3 = 13/6; likewise phi_b = 2/3 + 3/6 + 2/6 + 5/3 = 19/6 and
#   phi_c = 1 + 3/6 + 3/6 + 5/3 = 22/6 (they sum to v(abc) = 9).
EXACT = {"a": 13 / 6, "b": 19 / 6, "c": 22 / 6}


def _table(subset: frozenset[str]) -> float:
    return TABLE["".join(sorted(subset))]


def test_exact_shapley_and_leave_one_out_of_a_hand_computed_game() -> None:
    assert exact_shapley(["a", "b", "c"], _table) == pytest.approx(EXACT)
    assert sum(EXACT.values()) == pytest.approx(TABLE["abc"])  # efficiency
    assert leave_one_out(["a", "b", "c"], _table) == {"a": 4.0, "b": 5.0, "c": 5.0}  # v(abc) - v(bc) ...


def test_gtg_shapley_converges_to_the_exact_values_and_its_interval_holds_them() -> None:
    estimate = gtg_shapley(["a", "b", "c"], _table, np.random.default_rng(0), samples=600)
    assert estimate.samples == 600 and not estimate.exact
    for player, value in EXACT.items():
        assert estimate.values[player] == pytest.approx(value, abs=0.1)
        lo, hi = estimate.ci(player)
        assert lo <= value <= hi and hi - lo < 0.5
    # Guided sampling: each player leads the same number of permutations.
    leads = [w.order[0] for w in estimate.walks]
    assert {p: leads.count(p) for p in "abc"} == {"a": 200, "b": 200, "c": 200}


def _game(n: int) -> tuple[list[str], Callable[[frozenset[str]], float]]:
    """A non-additive game: diminishing returns of the players' weights, plus one pairwise synergy."""
    players = [f"p{i}" for i in range(n)]
    weight = {p: 1.0 + i for i, p in enumerate(players)}

    def value(subset: frozenset[str]) -> float:
        return float(np.sqrt(sum(weight[p] for p in subset))) + (0.5 if {"p0", "p1"} <= subset else 0.0)
    return players, value


def test_the_interval_covers_the_truth_for_a_noisy_utility_in_most_seeds() -> None:
    players, value = _game(6)
    truth = exact_shapley(players, value)
    covered = total = 0
    for seed in range(40):
        noise = np.random.default_rng(1000 + seed)
        # a fresh evaluation noise on every call (no cache): the interval must account for it too
        estimate = gtg_shapley(players, lambda s: value(s) + 0.05 * noise.standard_normal(),
                               np.random.default_rng(seed), samples=12)
        for p in players:
            lo, hi = estimate.ci(p)
            covered += lo <= truth[p] <= hi
            total += 1
    assert covered / total >= 0.85   # nominal 95 %


def test_truncation_saves_evaluations_and_stays_close() -> None:
    # Saturating returns, as a federation's: a few nodes' average already gets most of the round's gain.
    players = [f"p{i}" for i in range(8)]

    def value(subset: frozenset[str]) -> float:
        return 1.0 - float(np.exp(-sum(1.0 + int(p[1:]) for p in subset) / 4))
    truth = exact_shapley(players, value)
    runs = {}
    for truncation in (0.0, 0.05):
        cache = Evaluations(lambda s: {"m": -value(s)})
        estimate = gtg_shapley(players, cache.utility("m"), np.random.default_rng(3), samples=24,
                               truncation=truncation)
        runs[truncation] = (len(cache.cache), estimate)
    (full, _), (cut, truncated) = runs[0.0], runs[0.05]
    assert truncated.truncated > 0 and cut < 0.8 * full
    assert max(abs(truncated.values[p] - truth[p]) for p in players) < 0.1 * sum(truth.values())


def test_small_federations_get_the_exact_value_and_a_round_that_moved_nothing_gets_zeros() -> None:
    exact = shapley(["a", "b", "c"], _table, np.random.default_rng(0), samples=20, truncation=0.01)
    assert exact.exact and exact.samples == 6 and exact.values == pytest.approx(EXACT) and exact.ci("a")[0] == exact.ci("a")[1]
    flat = gtg_shapley(["a", "b"], lambda s: 0.0, np.random.default_rng(0), samples=10)
    assert flat.values == {"a": 0.0, "b": 0.0} and flat.samples == 0


def test_the_student_t_quantile_is_close_to_the_table() -> None:
    for dof, table in ((2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042)):
        assert t_quantile(0.975, dof) == pytest.approx(table, rel=0.035)


@pytest.mark.parametrize("key, value, message", [
    ("contribution.method", "banzhaf", "not one of off, loo, shapley, both"),
    ("contribution.utility", "accuracy", "not one of val_loss, val_cer"),
    ("contribution.samples", 0, "at least 1"),
    ("contribution.lines", -1, r"0 \(every validation line\) or more"),
    ("contribution.truncation", 1.0, r"\[0, 1\)"),
    ("contribution.samples", 2.5, "expected int"),
    ("contribution.subsets", "all", "not one of in-round, alone"),
    ("contribution.subsets", "in-round", "robust.rule=median .*would count those zeros"),
])
def test_bad_contribution_settings_are_refused_naming_the_key(key: str, value: object, message: str) -> None:
    rc = {key: value, **({"robust.rule": "median", "min-accepted": 3, "contribution.method": "both"}
                         if value == "in-round" else {})}
    with pytest.raises(StepConfigError, match=f"run config {key}: .*{message}"):
        build.validate_run_config(rc)
    with pytest.raises(ConfigError, match=key):
        FlConfig.from_run_config(rc)


def _delta(x: float) -> dict[str, np.ndarray]:
    return {"w": np.array([x, 2 * x], np.float32)}


def _scored(updates: list[Update], metric: Callable[[np.ndarray], float], chain_rc: dict | None = None) -> list[StepRecord]:
    """Run the chain's contribution scorer with a stand-in validation: `metric(w)` of the weights
    (coalitions `alone` unless `chain_rc` says otherwise)."""
    chain = build_server_chain({"contribution.method": "both", "contribution.subsets": "alone", **(chain_rc or {})})
    weights = {"w": np.zeros(2, np.float32)}
    candidate = chain.candidate(weights, updates, 1, 0, {}, evaluate=lambda w: {"val_loss": metric(w["w"]),
                                                                                "val_cer": metric(w["w"]) / 10})
    return [r for r in candidate.records if r.step == "contribution"]


def test_the_scorer_records_each_node_and_the_round_with_the_fedavg_of_each_subset() -> None:
    # The loss falls as w approaches [1, 2]: a and b help, a zero update (free rider) dilutes the step.
    updates = [Update("a", _delta(1.0), 10), Update("b", _delta(0.8), 10), Update("rider", _delta(0.0), 10)]
    records = _scored(updates, lambda w: float(np.sum((w - np.array([1.0, 2.0])) ** 2)))
    by = {r.client: r.info for r in records}
    assert set(by) == {"a", "b", "rider", "*"}
    assert by["*"]["method"] == "both" and by["*"]["evaluations"] == 8 and by["*"]["estimator"] == "exact"
    assert by["*"]["seconds"] >= 0
    for client in ("a", "b", "rider"):
        info = by[client]
        assert {"loo", "shapley", "shapley_ci", "samples", "utility"} <= set(info) and info["utility"] == "val_loss"
        assert info["samples"] == 6 and info["shapley_ci"] == [info["shapley"], info["shapley"]]
        assert info["shapley_val_cer"] == pytest.approx(info["shapley"] / 10)
    # The efficiency property on the real FedAvg: the values add up to the whole round's improvement.
    assert sum(by[c]["shapley"] for c in ("a", "b", "rider")) == pytest.approx(by["*"]["full"])
    assert by["rider"]["shapley"] < min(by["a"]["shapley"], by["b"]["shapley"])
    assert by["rider"]["loo"] < 0 < by["a"]["loo"]
    # LOO by hand: without the rider the step is the mean of a and b, [0.9, 1.8], loss 0.05; with it
    # [0.6, 1.2], loss 0.8; so the rider's LOO is 0.05 - 0.8 (the utility is the improvement).
    assert by["rider"]["loo"] == pytest.approx(0.05 - 0.8, abs=1e-5)


def test_in_round_coalitions_make_a_node_that_sent_nothing_worth_exactly_zero() -> None:
    # Steps that overshoot (the target is [0.5, 1]): under `alone` the zero update's damping earns it
    # credit; under `in-round` the others keep their share and the rider adds nothing, so it is worth 0.
    updates = [Update("a", _delta(1.0), 10), Update("b", _delta(0.8), 10), Update("rider", _delta(0.0), 10)]
    def overshoot(w: np.ndarray) -> float:
        return float(np.sum((w - np.array([0.3, 0.6])) ** 2))
    alone = {r.client: r.info for r in _scored(updates, overshoot)}
    in_round = {r.client: r.info for r in _scored(updates, overshoot, {"contribution.subsets": "in-round"})}
    assert alone["rider"]["shapley"] > max(alone["a"]["shapley"], alone["b"]["shapley"])
    assert in_round["rider"]["shapley"] == 0 and in_round["rider"]["loo"] == 0
    assert in_round["*"]["subsets"] == "in-round" and in_round["*"]["full"] == pytest.approx(alone["*"]["full"])


def test_a_robust_rule_scores_subsets_it_can_take_and_averages_the_smaller_ones() -> None:
    updates = [Update(n, _delta(x), 10) for n, x in (("a", 1.0), ("b", 1.1), ("c", 0.9), ("d", 1.0), ("e", -5.0))]
    records = _scored(updates, lambda w: float(np.sum((w - np.array([1.0, 2.0])) ** 2)),
                      {"robust.rule": "trimmed-mean", "robust.f": 1, "min-accepted": 3})
    by = {r.client: r.info for r in records}
    assert by["e"]["shapley"] == min(by[c]["shapley"] for c in "abcde")
    assert by["e"]["loo"] < 0.05   # the trimmed mean of all five already drops most of e


@dataclass(frozen=True)
class _MaskConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {}


@dataclass(frozen=True)
class _Masking:
    """A stand-in for secure aggregation: the server sees masked updates only."""
    name: str = "secagg"
    hides_updates: ClassVar[bool] = True

    def describe(self) -> str:
        return "stand-in masks"

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        return update


def test_a_step_that_hides_individual_updates_disables_contribution_with_a_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "FEATURES", (*build.FEATURES, Feature(_MaskConfig, client=lambda _: [_Masking()])))
    records = _scored([Update("a", _delta(1.0), 10), Update("b", _delta(0.5), 10)], lambda w: 0.0)
    assert [(r.client, dict(r.info)) for r in records] == [
        ("*", {"method": "both", "disabled": "secagg hides each node's update from the server"})]
    assert "disabled (secagg hides" in describe({"contribution.method": "both"})


def test_without_server_validation_the_scorer_says_why() -> None:
    chain = build_server_chain({"contribution.method": "loo"})
    candidate = chain.candidate({"w": np.zeros(2, np.float32)}, [Update("a", _delta(1.0), 10)], 1, 0, {})
    (record,) = [r for r in candidate.records if r.step == "contribution"]
    assert record.client == "*" and "validates no candidate" in record.info["disabled"]
    assert build_server_chain({}).scorers == ()   # off by default: nothing runs, nothing is recorded


def test_contributions_cumulate_over_rounds_with_summed_variances() -> None:
    rows = [StepRecord("contribution", c, {"loo": loo, "shapley": s, "shapley_se": se, "utility": "val_loss"})
            for c, loo, s, se in (("a", 1.0, 2.0, 0.3), ("b", 0.5, 1.0, 0.4), ("a", 1.0, 1.0, 0.4))]
    summary = cumulate([*rows, StepRecord("contribution", "*", {"method": "both"})])
    assert summary is not None and summary["ranking"] == ["a", "b"]
    a = summary["clients"]["a"]
    assert a["shapley"] == 3.0 and a["loo"] == 2.0 and a["rounds"] == 2
    assert a["shapley_ci"] == pytest.approx([3.0 - 1.959964 * 0.5, 3.0 + 1.959964 * 0.5], rel=1e-5)
    assert cumulate([]) is None


def test_a_free_rider_ranks_last_in_a_real_federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from fl_inprocess import run_in_process

    from fedocr.cli import main

    # replay-window 0: the replay check would reject the replayed delta outright; the scorer must find it here
    report, _ = run_in_process(tmp_path, monkeypatch, 2, **{"attack.nodes": "bank:free-rider",
                                                            "contribution.method": "both",
                                                            "contribution.lines": 32, "replay-window": 0})
    for r in report["rounds"]:
        rows = {s["client"]: s for s in r["steps"] if s["step"] == "contribution"}
        assert set(rows) == {"hospital", "bank", "school", "*"} and rows["*"]["evaluations"] == 8
        assert rows["bank"]["shapley"] < min(rows["hospital"]["shapley"], rows["school"]["shapley"])
        assert rows["bank"]["loo"] < min(rows["hospital"]["loo"], rows["school"]["loo"])
    final = report["final"]["contribution"]
    assert final["ranking"][-1] == "bank" and final["utility"] == "val_loss"
    assert final["clients"]["bank"]["rounds"] == 2 and len(final["clients"]["bank"]["shapley_ci"]) == 2
    capsys.readouterr()
    assert main(["fl", "show", report["run_id"], "--store", str(tmp_path / "runs.db")]) == 0
    shown = capsys.readouterr().out
    assert "contribution (val_loss" in shown and "over the run" in shown


def test_exact_shapley_agrees_with_the_permutation_definition() -> None:
    players, value = _game(4)
    by_orders = dict.fromkeys(players, 0.0)
    orders = list(itertools.permutations(players))
    for order in orders:
        for j, p in enumerate(order):
            by_orders[p] += (value(frozenset(order[: j + 1])) - value(frozenset(order[:j]))) / len(orders)
    assert exact_shapley(players, value) == pytest.approx(by_orders)


def test_fedavg_is_what_a_plain_chain_proposes_for_a_subset() -> None:
    chain = build_server_chain({"server-lr": 0.5})
    updates = [Update("a", _delta(1.0), 30), Update("b", _delta(3.0), 10)]
    proposed = chain.proposer({"w": np.ones(2, np.float32)}, {}, 1, 0)(updates)
    step = FedAvg()(updates, StepContext(1, np.random.default_rng(0), {})).step
    assert proposed["w"].tolist() == pytest.approx((1 + 0.5 * step["w"]).tolist())
    assert chain.proposer({"w": np.ones(2, np.float32)}, {}, 1, 0)([])["w"].tolist() == [1.0, 1.0]


def test_with_fewer_permutations_than_nodes_no_node_is_favoured_by_its_name() -> None:
    # A symmetric game (every node worth the same): the first nodes by name once led every
    # permutation and got their solo marginal, the others never did (0.18 against 0.13 of a true 0.16).
    players = [f"n{i:02d}" for i in range(40)]
    first, last = [], []
    for seed in range(8):
        estimate = gtg_shapley(players, lambda s: len(s) ** 0.5, np.random.default_rng(seed), samples=20,
                               truncation=0.0)
        values = [estimate.values[p] for p in players]
        first.append(np.mean(values[:20]))
        last.append(np.mean(values[20:]))
    assert abs(np.mean(first) - np.mean(last)) < 0.015, (np.mean(first), np.mean(last))
