"""A clustered run's k models on the server (pipeline.cluster: IFCA, split as CFL does).

The server state keeps each cluster's committed model and its validation scores; this module
says which models a round sends, which model an update trained (the cluster its node picked,
checked against k), and how a round's accepted updates group: by the nodes' picks once the
clusters exist, or, at the split round, by the similarity of the updates, all of which then
trained the one shared model. The round loop (`rounds`) runs the server chain once per group.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedocr.federated.pipeline.cluster import STEP, ClusterConfig, can_split, find_split, split
from fedocr.federated.pipeline.types import SERVER, StepRecord, Update, Weights
from fedocr.federated.state import ServerState


@dataclass
class ClusterModel:
    """One cluster's committed model and its validation CER and loss on the server's lines."""
    weights: Weights
    cer: float | None
    loss: float | None

    def to_state(self) -> dict:
        return {"weights": self.weights, "cer": self.cer, "loss": self.loss}


def models(state: ServerState) -> list[ClusterModel]:
    """The run's cluster models in index order (none before the split)."""
    return [ClusterModel(**state.clusters[str(c)]) for c in range(len(state.clusters))]


def sent(state: ServerState) -> tuple[Weights, list[Weights]]:
    """What a round sends down: one model, or cluster 0's followed by the others."""
    found = models(state)
    if not found:
        return state.weights, []
    return found[0].weights, [m.weights for m in found[1:]]


def trained_from(state: ServerState, update: Update) -> tuple[Weights, str | None]:
    """The model `update` was trained from, or why its named cluster is none of the run's."""
    found = models(state)
    if not found:
        return state.weights, None
    picked = update.metrics.get("cluster")
    if picked is None or not float(picked).is_integer() or not 0 <= picked < len(found):
        return state.weights, f"names cluster {picked}, the run has clusters 0-{len(found) - 1}"
    return found[int(picked)].weights, None


@dataclass
class Grouping:
    """A round's accepted updates by cluster, the model each group's updates start from, and the
    records that say who went where (and whether this round split the model)."""
    groups: dict[int, list[Update]]
    bases: dict[int, ClusterModel]
    records: list[StepRecord] = field(default_factory=list)
    splits: bool = False          # this round's groups become the k clusters (if every one commits)
    postponed: str | None = None  # why a due split waits or was declined: the round trains the one model


def by_cluster(updates: Sequence[Update], assigned: dict[str, int]) -> dict[int, list[Update]]:
    """The updates under the cluster each client is assigned to."""
    groups: dict[int, list[Update]] = {}
    for u in updates:
        groups.setdefault(assigned[u.client], []).append(u)
    return groups


def group(state: ServerState, config: ClusterConfig, updates: Sequence[Update], server_round: int,
          min_accepted: int, available: int = 0) -> Grouping | None:
    """The round's updates by cluster; at the split round (the first with clusters due and none
    yet) the updates' similarity decides, and every group starts from the shared model. None
    before the split round; a Grouping with `postponed` when the split is due but the round's
    updates do not make k groups of `min_accepted` each (too few sampled, or all alike). With k to
    find, a clear cut splits on any round, but no clear cut declines the split for good (recorded
    in the state's `cluster` entry; later rounds return None) only on a round with an accepted
    update from each of the `available` nodes: a sample of one kind must not decide for all."""
    found = models(state)
    if found:
        groups = by_cluster(updates, {u.client: int(u.metrics["cluster"]) for u in updates})
        records = [StepRecord(STEP, u.client, {"cluster": int(u.metrics["cluster"])}) for u in updates]
        return Grouping(groups, {c: found[c] for c in groups}, records)
    if not config.active or server_round < config.split_round:
        return None
    if config.finds_k and "declined" in state.steps.get(STEP, {}):
        return None   # with k to find, a round with every node's update found no groups
    split_info: dict[str, Any] = {}   # with k to find: each tried k's silhouette

    def no_split(why: str, outcome: str = "postponed") -> Grouping:
        """The round trains the one model; the server's record says why (and what was tried)."""
        return Grouping({}, {}, [StepRecord(STEP, SERVER, {"split": False, outcome: why, **split_info})],
                        postponed=why)

    if config.finds_k:
        cut = find_split(updates, config.max_k, config.min_silhouette, min_accepted)
        split_info = {"silhouette": {str(k): round(v, 4) for k, v in cut.silhouettes.items()}}
        if cut.groups is None and cut.silhouettes and len(updates) < available:
            return no_split(f"split postponed: no clear groups among {len(updates)} of {available} nodes (best "
                            f"silhouette {max(cut.silhouettes.values()):.3f}); cluster.k = 0 declines only on a "
                            f"round with every node's update (fraction-train = 1 at the split round)")
        if cut.groups is None and cut.silhouettes:
            # Decided once: as a federation of one kind trains, its shared direction fades and chance
            # groups of sites score higher (retried every round, one-kind-mini once split at round 5).
            state.steps.setdefault(STEP, {})["declined"] = server_round
            return no_split(f"split declined: {len(updates)} accepted update(s) show no clear groups (best "
                            f"silhouette {max(cut.silhouettes.values()):.3f} < cluster.min-silhouette="
                            f"{config.min_silhouette:g}); the run keeps one model", outcome="declined")
        if cut.groups is None:
            return no_split("split postponed: " + (
                f"no cut of {len(updates)} accepted update(s) into 2-{config.max_k} groups has at least "
                f"min-accepted={min_accepted} in each (an update unlike all others, or all alike)"
                if can_split(len(updates), min_accepted) else
                f"{len(updates)} accepted update(s) cannot make 2 groups of at least min-accepted={min_accepted}"))
        by_client, k = cut.groups, len(set(cut.groups.values()))
    else:
        by_client, k = split(updates, config.k), config.k
    groups = by_cluster(updates, by_client)
    sizes = sorted(len(g) for g in groups.values())
    if len(groups) < k or sizes[0] < min_accepted:
        return no_split(f"split postponed: {len(updates)} accepted update(s) made groups of {sizes}, the split "
                        f"needs {k} groups of at least min-accepted={min_accepted}")
    shared = ClusterModel(state.weights, state.committed_cer, state.committed_loss)
    records = [StepRecord(STEP, u.client, {"cluster": by_client[u.client], "split": True}) for u in updates]
    records.append(StepRecord(STEP, SERVER, {"split": True, "k": k, **split_info,
                                             "groups": {str(c): sorted(u.client for u in g)
                                                        for c, g in sorted(groups.items())}}))
    return Grouping(groups, {c: shared for c in groups}, records, splits=True)


def unsplit(records: Sequence[StepRecord], why: str) -> list[StepRecord]:
    """A split round's records when not every group's model committed: the server's record says
    why and which groups it had proposed; the nodes' records go, as they would name clusters that
    never came to be."""
    return [StepRecord(STEP, SERVER, {**r.info, "split": False, "postponed": why}) for r in records
            if r.client == SERVER]


def keep(state: ServerState, committed: dict[int, ClusterModel]) -> None:
    """Store the round's committed cluster models (at the split: all k). The state's `weights`
    become the cluster model that validates best on the server's lines, so what reads one model
    (round files, model.pt, a node outside every cluster) reads a trained one."""
    current = dict(enumerate(models(state)))
    current.update(committed)
    state.clusters = {str(c): m.to_state() for c, m in sorted(current.items())}
    best = min(current.values(), key=lambda m: float("inf") if m.cer is None else m.cer)
    state.weights, state.committed_cer, state.committed_loss = best.weights, best.cer, best.loss


def membership(records: Sequence[StepRecord], k: int) -> dict[str, int]:
    """Each node's cluster from the run's records in round order: where the server last aggregated
    its update, or, for a node it never aggregated after the split, the cluster the node picked
    in its latest federated evaluation (a cluster outside 0..k-1 counts for nothing)."""
    trained: dict[str, int] = {}
    evaluated: dict[str, int] = {}
    for r in records:
        if r.step == STEP and r.client != SERVER and r.info.get("cluster") in range(k):
            trained[r.client] = int(r.info["cluster"])
        elif r.step == "evaluate" and r.info.get("cluster") in range(k):
            evaluated[r.client] = int(r.info["cluster"])
    return {**evaluated, **trained}
