"""Clustered federated learning (issue 15): IFCA's k models, split as CFL does by the similarity of
the updates, membership per node per round in the run store, and what cannot combine with it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedocr.cli import main
from fedocr.data.organisations import get_federation
from fedocr.federated import clusters
from fedocr.federated.pipeline.build import build_server_chain, validate_run_config
from fedocr.federated.pipeline.cluster import (PICK, ClusterConfig, adjusted_rand_index, find_split, pick,
                                               silhouette, split)
from fedocr.federated.pipeline.settings import StepConfigError
from fedocr.federated.pipeline.types import SERVER, StepRecord, Update
from fedocr.federated.protocol import Received
from fedocr.federated.rounds import screen
from fedocr.federated.runs.store import ClientRecord
from fedocr.federated.state import ServerState
from fedocr.model import load_checkpoint
from fedocr.serve.app import ServeConfig, create_app
from fl_inprocess import run_in_process


def _updates(seed: int = 0, groups: int = 2, n: int = 6, spread: float = 0.2) -> tuple[list[Update], dict[str, str]]:
    """n updates sharing one large direction, plus one of `groups` group directions, plus noise."""
    rng = np.random.default_rng(seed)
    common, *directions = (rng.normal(size=200) for _ in range(groups + 1))
    truth = {f"n{i}": "abcdefgh"[i % groups] for i in range(n)}
    updates = [Update(name, {"w": (5 * common + directions["abcdefgh".index(g)]
                                   + spread * rng.normal(size=200)).reshape(10, 20)}, 10)
               for name, g in truth.items()]
    return updates, truth


def _state() -> ServerState:
    """A fresh server state for the (10, 20) updates of `_updates`."""
    return ServerState.fresh({"w": np.zeros((10, 20), np.float32)}, "v1")


def test_the_split_finds_groups_that_a_shared_direction_hides() -> None:
    updates, truth = _updates()
    found = split(updates, 2)
    assert adjusted_rand_index(found, truth) == 1.0
    assert found["n0"] == 0   # groups are numbered by their first member's name
    assert set(split(updates, 3).values()) == {0, 1, 2}
    assert split(updates[:1], 2) == {"n0": 0}


def test_a_split_that_finds_k_finds_the_hidden_groups_and_none_in_noise() -> None:
    for groups, n in ((2, 6), (3, 9), (3, 10)):
        updates, truth = _updates(seed=groups, groups=groups, n=n)
        found = find_split(updates, max_k=5, min_silhouette=0.25, min_size=2)
        assert found.groups is not None and len(set(found.groups.values())) == groups
        assert adjusted_rand_index(found.groups, truth) == 1.0
        assert max(found.silhouettes, key=lambda k: found.silhouettes[k]) == groups
    # nodes of one kind: nothing but noise on the shared direction, so no cut is clear enough
    alike, _ = _updates(seed=4, groups=1, n=8, spread=1.0)
    found = find_split(alike, max_k=5, min_silhouette=0.25, min_size=2)
    assert found.groups is None and max(found.silhouettes.values()) < 0.1
    # no cut into groups of min_size each: nothing to score
    assert find_split(_updates(n=3)[0], max_k=4, min_silhouette=0.25, min_size=2) == type(found)(None, {})


def test_silhouette_is_one_for_far_apart_tight_groups_and_zero_for_a_point_alone() -> None:
    distances = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [2, 2, 0, 0], [2, 2, 0, 0]], dtype=float)
    assert silhouette(distances, [0, 0, 1, 1]) == 1.0
    assert silhouette(distances, [0, 0, 1, 2]) == 0.5    # two points alone in their groups score 0
    assert silhouette(distances, [0, 1, 0, 1]) < 0       # each point nearer the other group
    assert silhouette(distances, [0, 0, 0, 0]) == 0.0


def test_adjusted_rand_index_ignores_labels_and_scores_chance_below_zero() -> None:
    assert adjusted_rand_index({"a": 0, "b": 0, "c": 1, "d": 1}, {"a": "x", "b": "x", "c": "y", "d": "y"}) == 1.0
    assert adjusted_rand_index({"a": 1, "b": 1, "c": 0, "d": 0}, {"a": "x", "b": "x", "c": "y", "d": "y"}) == 1.0
    assert adjusted_rand_index({"a": 0, "b": 0, "c": 1, "d": 1}, {"a": "x", "b": "y", "c": "x", "d": "y"}) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="two or more"):
        adjusted_rand_index({"a": 0}, {"a": "x"})


def test_a_node_picks_the_lowest_finite_loss_and_refuses_when_none_is() -> None:
    assert pick([3.0, 1.5, 2.0]) == 1 and pick([1.0, 1.0]) == 0
    assert pick([float("nan"), 2.0, float("inf")]) == 1   # a diverged cluster model is passed over
    with pytest.raises(ValueError, match="cannot pick"):
        pick([float("nan"), float("inf")])
    with pytest.raises(ValueError, match="cannot pick"):
        pick([])


def test_clustering_refuses_settings_it_cannot_honour() -> None:
    with pytest.raises(StepConfigError, match="cluster.k"):
        validate_run_config({"cluster.method": "ifca", "cluster.k": 1})
    for key, value in (("cluster.max-k", 1), ("cluster.min-silhouette", 0.0), ("cluster.min-silhouette", 1.0)):
        with pytest.raises(StepConfigError, match=key):
            validate_run_config({"cluster.method": "ifca", "cluster.k": 0, key: value})
    with pytest.raises(StepConfigError, match="cluster.method"):
        validate_run_config({"cluster.method": "kmeans"})
    for clash in ({"secure.method": "secagg+"}, {"server-momentum": 0.9}, {"personal.method": "ditto"},
                  {"aggregate": "backbone"}, {"robust.rule": "trust"}, {"contribution.method": "loo"},
                  {"dp.level": "client", "dp.clip": 1.0, "dp.noise-multiplier": 1.0}, {"compress.top-k": 0.1}):
        key = "compress.error-feedback" if "compress.top-k" in clash else next(iter(clash))
        with pytest.raises(StepConfigError, match=f"run config {key}: does not combine with cluster.method=ifca"):
            validate_run_config({"cluster.method": "ifca", **clash})
    validate_run_config({"cluster.method": "ifca", "robust.rule": "median", "min-accepted": 3, "compress.top-k": 0.1,
                         "compress.error-feedback": False})


def test_an_update_naming_a_cluster_the_run_lacks_is_refused_and_the_state_keeps_the_clusters(tmp_path: Path) -> None:
    w0, w1 = {"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}
    state = ServerState.fresh(w0, "v1")
    clusters.keep(state, {0: clusters.ClusterModel(w0, 0.4, 1.0), 1: clusters.ClusterModel(w1, 0.2, 0.8)})
    assert state.committed_cer == 0.2 and state.weights is w1    # the best cluster stands for the run
    state.save(tmp_path)
    loaded = ServerState.load(tmp_path)
    assert loaded is not None and [m.cer for m in clusters.models(loaded)] == [0.4, 0.2]
    np.testing.assert_array_equal(clusters.sent(loaded)[1][0]["w"], w1["w"])
    base, why = clusters.trained_from(loaded, Update("x", {}, 1, {"cluster": 1.0}))
    assert why is None and base["w"][0] == 1
    for bad in ({"cluster": 2.0}, {"cluster": 0.5}, {}):
        assert "the run has clusters 0-1" in str(clusters.trained_from(loaded, Update("x", {}, 1, bad))[1])
    # the round screens it out with that reason, before any step sees it
    got = screen(Received(ClientRecord("x", "7", False, None), Update("x", {"w": w1["w"]}, 1, {"cluster": 2.0})),
                 build_server_chain({}), w0, 3, 0, {}, clusters.trained_from(loaded, Update("x", {}, 1, {"cluster": 2.0}))[1])
    assert not got.record.accepted and "names cluster 2.0" in str(got.record.reason)


def test_a_split_waits_for_k_groups_of_min_accepted_and_membership_is_the_servers_word() -> None:
    updates, truth = _updates()
    state, config = _state(), ClusterConfig(method="ifca", k=2)
    assert clusters.group(state, replace(config, split_round=2), updates, 1, 2) is None   # not due yet
    waiting = clusters.group(state, config, updates[:3], 1, 2)        # 3 updates cannot make 2 groups of 2
    assert waiting is not None and waiting.postponed and "split postponed" in waiting.postponed
    alike = [Update(u.client, updates[0].tensors, 10) for u in updates]
    assert clusters.group(state, config, alike, 1, 2).postponed       # nothing to tell them apart
    grouping = clusters.group(state, config, updates, 1, 2)
    assert grouping is not None and grouping.splits and not grouping.postponed
    assert adjusted_rand_index(clusters.membership(grouping.records, 2), truth) == 1.0
    # a node's own pick record, or an out-of-range evaluation pick, never makes it a member
    claims = [StepRecord(PICK, "n0", {"cluster": 1, "losses": [2.0, 1.0]}),
              StepRecord("evaluate", "n9", {"cluster": 7.0}), StepRecord("evaluate", "n8", {"cluster": 1.0})]
    found = clusters.membership([*grouping.records, *claims], 2)
    assert found["n0"] == 0 and "n9" not in found and found["n8"] == 1


def test_a_split_that_finds_k_records_its_silhouettes_and_declines_for_good_when_the_updates_show_no_groups() -> None:
    state, config = _state(), ClusterConfig(method="ifca", k=0)
    updates, truth = _updates(groups=3, n=9)
    grouping = clusters.group(state, config, updates, 1, 2)
    assert grouping is not None and grouping.splits and len(grouping.groups) == 3
    server = next(r.info for r in grouping.records if r.client == SERVER)
    assert server["k"] == 3 and max(server["silhouette"], key=server["silhouette"].get) == "3"
    assert adjusted_rand_index(clusters.membership(grouping.records, 3), truth) == 1.0
    # min-accepted 4: three groups of three are too small, and a cut into two splits one of them
    too_small = clusters.group(state, config, updates, 1, 4)
    assert too_small is not None and not too_small.splits
    assert "has at least min-accepted=4 in each" in str(too_small.postponed)
    alike, _ = _updates(seed=4, groups=1, n=8, spread=1.0)
    declined = clusters.group(state, config, alike, 1, 2)
    assert declined is not None and not declined.splits and "split declined" in str(declined.postponed)
    assert max(declined.records[0].info["silhouette"].values()) < 0.25
    # decided once: later rounds train the one model, even on updates that would now split
    assert clusters.group(state, config, updates, 2, 2) is None
    assert state.steps["cluster"] == {"declined": 1}
    # ... a run resumed with k given is not bound by it
    assert clusters.group(state, replace(config, k=2), updates, 3, 2).splits


def test_only_a_round_with_every_nodes_update_declines_and_an_unclustered_run_keeps_no_cluster_state() -> None:
    alike, _ = _updates(seed=4, groups=1, n=8, spread=1.0)
    state, config = _state(), ClusterConfig(method="ifca", k=0)
    sample = clusters.group(state, config, alike, 1, 2, available=20)    # 8 of 20 nodes: one kind by chance?
    assert sample is not None and "split postponed: no clear groups among 8 of 20 nodes" in str(sample.postponed)
    assert "cluster" not in state.steps
    assert "split declined" in str(clusters.group(state, config, alike, 2, 2, available=8).postponed)
    plain = _state()
    assert clusters.group(plain, ClusterConfig(), alike, 1, 2, available=8) is None and plain.steps == {}


def test_a_split_that_does_not_commit_leaves_no_node_in_a_cluster_that_never_came_to_be() -> None:
    updates, _ = _updates(groups=3, n=9)
    grouping = clusters.group(_state(),
                              ClusterConfig(method="ifca", k=0), updates, 1, 2)
    assert grouping is not None and grouping.splits
    kept = clusters.unsplit(grouping.records, "split postponed: not every group's model committed")
    assert [r.client for r in kept] == [SERVER] and kept[0].info["split"] is False
    assert kept[0].info["k"] == 3 and "postponed" in kept[0].info   # what was proposed, and why not
    # a later split into 2: a record naming cluster 2 of an earlier, failed split of 3 counts for nothing
    later = [StepRecord("cluster", "n1", {"cluster": 0, "split": True}), StepRecord("evaluate", "n5", {"cluster": 1.0})]
    stale = StepRecord("cluster", "n5", {"cluster": 2, "split": True})
    assert clusters.membership([stale, *later], 2) == {"n1": 0, "n5": 1}


def test_a_run_whose_updates_show_no_clear_groups_keeps_one_model_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    report, cfg = run_in_process(tmp_path, monkeypatch, rounds=2, node_configs=[{"partition-id": i} for i in range(6)],
                                 federation="hidden-groups-mini", **{"cluster.method": "ifca", "cluster.k": 0,
                                                                     "cluster.min-silhouette": 0.99,
                                                                     "cluster.pick-lines": 16, "lines-per-client": 32})
    assert report["status"] == "finished" and "clusters" not in report["final"]
    assert all(r["applied"] for r in report["rounds"])
    # declined at round 1 for good: round 2 does not try again, and the server state keeps the decision
    assert not [s for s in report["rounds"][1]["steps"] if s["step"] == "cluster" and s["client"] == "*"]
    saved = ServerState.load(cfg.out_path())
    assert saved is not None and saved.steps["cluster"] == {"declined": 1}
    capsys.readouterr()
    assert main(["fl", "show", report["run_id"], "--store", str(tmp_path / "runs.db")]) == 0
    shown = capsys.readouterr().out
    assert "cluster split declined: 6 accepted update(s) show no clear groups (best silhouette" in shown


def test_ifca_finds_k_recovers_hidden_groups_and_records_membership_every_round(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fed = get_federation("hidden-groups-mini")
    report, cfg = run_in_process(tmp_path, monkeypatch, rounds=2, node_configs=[{"partition-id": i} for i in range(6)],
                                 federation="hidden-groups-mini", **{"cluster.method": "ifca", "cluster.k": 0,
                                                                     "cluster.pick-lines": 16, "lines-per-client": 160})
    truth = {node.name: node.org for node in fed.nodes}
    membership = report["final"]["clusters"]["membership"]
    assert report["final"]["clusters"]["k"] == 2 and set(membership) == set(truth)   # two kinds, found
    assert adjusted_rand_index(membership, truth) == 1.0
    split_round, picked_round = (r["steps"] for r in report["rounds"])
    split = next(s for s in split_round if s["step"] == "cluster" and s["client"] == "*" and s.get("split"))
    assert split["k"] == 2 and max(split["silhouette"], key=split["silhouette"].get) == "2"
    # round 2: the models had specialised: each node's own kind's model had the lower loss on its lines
    picks = {s["client"]: s["losses"] for s in picked_round if s["step"] == PICK}
    assert set(picks) == set(truth)
    assert all(losses[membership[node]] < losses[1 - membership[node]] for node, losses in picks.items())
    out = cfg.out_path()
    models = [load_checkpoint(out / f"cluster-{c}.pt") for c in (0, 1)]
    assert [m.provenance["cluster"] for m in models] == [0, 1]
    changed = {s["cluster"]: r["round"] for r in report["rounds"] for s in r["steps"]   # a cluster's file is
               if s["step"] == "cluster" and s.get("committed")}                         # written when it changes
    assert [m.provenance["round"] for m in models] == [changed[0], changed[1]]
    assert all(r["applied"] for r in report["rounds"])

    # the operator sees the split and the members per round, in the CLI and on the dashboard
    capsys.readouterr()
    assert main(["fl", "show", report["run_id"], "--store", str(tmp_path / "runs.db")]) == 0
    shown = capsys.readouterr().out
    assert "cluster split by update similarity (k found: silhouette 2: " in shown
    assert "clusters (2): 0: site-1, site-3, site-5; 1: site-2, site-4, site-6" in shown
    with TestClient(create_app(ServeConfig(model=None, runs=tmp_path / "runs.db"))) as client:
        detail = client.get(f"/api/runs/{report['run_id']}").json()
    assert {c["client"]: c["cluster"] for c in detail["clients"]} == membership
