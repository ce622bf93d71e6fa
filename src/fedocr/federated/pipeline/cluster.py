"""Clustered federated learning: k models for k hidden groups of nodes (IFCA, Ghosh et al. 2020,
"An Efficient Framework for Clustered Federated Learning", NeurIPS, arXiv:2006.04088).

The server keeps one model per cluster and sends all k each round; a node scores each on its own
training lines (`pick`: the lowest CTC loss), trains that one and says which it trained. The
server aggregates each cluster's updates into that cluster's model with the rest of the chain
(screen, FedAvg or a robust rule, apply, validate, commit or roll back), one cluster at a time.

IFCA needs the k models to differ before a node's loss can tell them apart, and k copies of one
pre-trained model never do. So the run starts as one federation, and at round `cluster.split-round`
the server splits the round's updates the way CFL does (Sattler et al. 2020, "Clustered
Federated Learning", IEEE TNNLS, arXiv:1910.01991): by the cosine similarity of the updates,
centred on their mean so the direction every node shares does not hide the ones that differ,
into k groups (average-linkage, SciPy). With `cluster.k = 0` the split also finds k: the cut of
the same tree, from 2 to `cluster.max-k` groups of at least `min-accepted` updates each, with the
highest mean silhouette (Rousseeuw 1987), and no split while even that one's silhouette is below
`cluster.min-silhouette` (updates with no groups in them score about 0). Each group's aggregate
(the configured rule) seeds its cluster's model, once every group has `min-accepted` updates and
commits (else the split waits for a later round); from the next round on, the nodes choose (and
may change) their cluster by loss.

Membership is the server's to know (IFCA reveals it by design): the server records where it
aggregated each accepted update (`cluster`), and a node's own record of its losses is kept apart
(`cluster-pick`), so a node cannot write itself into a cluster. This module is NumPy and SciPy only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import Update

METHODS = ("none", "ifca")
STEP = "cluster"          # the server's records: where each accepted update was aggregated
PICK = "cluster-pick"     # a node's own record: the k losses it picked by (its word, not membership)


@dataclass(frozen=True)
class ClusterConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"cluster.method": "method", "cluster.k": "k", "cluster.max-k": "max_k",
                                      "cluster.min-silhouette": "min_silhouette",
                                      "cluster.split-round": "split_round", "cluster.pick-lines": "pick_lines"}

    method: str = "none"    # `cluster.method`: none, or ifca (k models; each node picks by its loss)
    k: int = 2              # `cluster.k`: the number of cluster models; 0: found by the split
    max_k: int = 4          # `cluster.max-k`: the most clusters a split that finds k may make
    min_silhouette: float = 0.25   # `cluster.min-silhouette`: how clear groups must be for a split that finds k
    split_round: int = 1    # `cluster.split-round`: the round whose updates split the one model into k
    pick_lines: int = 64    # `cluster.pick-lines`: training lines a node scores the k models on

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise bad("cluster.method", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if self.k < 2 and self.k != 0:
            raise bad("cluster.k", "must be 2 or more, or 0 to find it "
                                   "(one cluster is plain FedAvg: cluster.method=none)")
        if self.max_k < 2:
            raise bad("cluster.max-k", "must be 2 or more")
        if not 0 < self.min_silhouette < 1:
            raise bad("cluster.min-silhouette", "must be in (0, 1)")
        if self.split_round < 1:
            raise bad("cluster.split-round", "must be 1 or more")
        if self.pick_lines < 1:
            raise bad("cluster.pick-lines", "must be 1 or more")

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def finds_k(self) -> bool:
        return self.k == 0

    def describe(self) -> str:
        models = (f"2-{self.max_k} cluster models as the split finds them (silhouette >= {self.min_silhouette:g})"
                  if self.finds_k else f"{self.k} cluster models")
        return (f"IFCA: {models}, split at round {self.split_round} by the cosine similarity of "
                f"the updates; each node trains the one with the lowest loss on {self.pick_lines} of its lines")


def pick(losses: Sequence[float]) -> int:
    """IFCA's cluster estimate: the model with the lowest loss on the node's lines (the first on a
    tie). A model whose loss is not finite (one that diverged) is never picked while another is."""
    values = np.asarray(losses, dtype=np.float64)
    if not np.any(np.isfinite(values)):
        raise ValueError(f"cannot pick a cluster from losses {list(losses)}")
    return int(np.argmin(np.where(np.isfinite(values), values, np.inf)))


def flat(update: Update, keys: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(update.tensors[k], dtype=np.float64).ravel() for k in keys])


def _tree(updates: Sequence[Update]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(the clients by name, their centred updates' cosine distances, the average-linkage tree)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    ordered = sorted(updates, key=lambda u: u.client)
    # Float tensors only: an integer buffer (BatchNorm's step counter) moves alike for every node.
    keys = sorted(k for k in set.intersection(*(set(u.tensors) for u in ordered))
                  if np.issubdtype(np.asarray(ordered[0].tensors[k]).dtype, np.floating))
    vectors = np.stack([flat(u, keys) for u in ordered])
    vectors -= vectors.mean(axis=0)
    norms = np.linalg.norm(vectors, axis=1)
    vectors /= np.where(norms > 0, norms, 1.0)[:, None]
    distances = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    return [u.client for u in ordered], distances, linkage(squareform(distances, checks=False), method="average")


def _cut(clients: list[str], tree: np.ndarray, k: int) -> dict[str, int]:
    """At most k groups of the tree, numbered in the order their first member appears by name."""
    from scipy.cluster.hierarchy import fcluster

    labels = fcluster(tree, t=k, criterion="maxclust")
    renumber: dict[int, int] = {}
    return {c: renumber.setdefault(int(label), len(renumber)) for c, label in zip(clients, labels)}


def split(updates: Sequence[Update], k: int) -> dict[str, int]:
    """Each update's group of k: average-linkage clustering of the centred updates by cosine
    distance. Groups are numbered in the order their first member appears by client name, so a
    seed gives the same numbering. An update equal to the mean (nothing of its own) is at distance
    1 from every other; fewer updates than k give fewer groups."""
    if len(updates) < 2:
        return {u.client: 0 for u in updates}
    clients, _, tree = _tree(updates)
    return _cut(clients, tree, k)


def silhouette(distances: np.ndarray, labels: Sequence[int]) -> float:
    """The mean silhouette of a grouping (Rousseeuw 1987): per point, how much nearer its own
    group is than the next one, from -1 to 1; 0 for a point alone in its group (and for one group)."""
    groups = np.asarray(labels)
    names = set(groups.tolist())
    if len(names) < 2:
        return 0.0   # one group: nothing to be nearer to
    scores = np.zeros(len(groups))
    for i, g in enumerate(groups):
        own = groups == g
        own[i] = False
        if own.any():
            inside = distances[i, own].mean()
            nearest = min(distances[i, groups == h].mean() for h in names if h != g)
            scores[i] = (nearest - inside) / max(inside, nearest) if max(inside, nearest) > 0 else 0.0
    return float(scores.mean())


@dataclass(frozen=True)
class FoundSplit:
    """A split that found k: the groups (None when no cut is clear enough) and each tried k's silhouette."""
    groups: dict[str, int] | None
    silhouettes: dict[int, float]


def can_split(n: int, min_size: int) -> bool:
    """Whether n updates can make two groups of `min_size` (and a silhouette needs three points)."""
    return n >= max(2 * min_size, 3)


def find_split(updates: Sequence[Update], max_k: int, min_silhouette: float, min_size: int) -> FoundSplit:
    """The tree's cut into 2..max_k groups of at least `min_size` updates with the highest
    silhouette, if that reaches `min_silhouette` (CFL's question "do these updates disagree?"
    answered by how clearly they group)."""
    if not can_split(len(updates), min_size):
        return FoundSplit(None, {})
    clients, distances, tree = _tree(updates)
    cuts = {k: _cut(clients, tree, k) for k in range(2, min(max_k, len(updates) - 1) + 1)}
    scores = {k: silhouette(distances, [cut[c] for c in clients]) for k, cut in cuts.items()
              if len(set(cut.values())) == k and min(np.bincount(list(cut.values()))) >= min_size}
    if not scores or max(scores.values()) < min_silhouette:
        return FoundSplit(None, scores)
    return FoundSplit(cuts[max(scores, key=lambda k: scores[k])], scores)


def adjusted_rand_index(found: Mapping[str, int], truth: Mapping[str, str | int]) -> float:
    """Agreement of two partitions of the same nodes, 1.0 for the same grouping whatever the
    labels, about 0 for chance (Hubert & Arabie 1985, from the contingency table)."""
    from scipy.special import comb

    nodes = sorted(set(found) & set(truth))
    if len(nodes) < 2:
        raise ValueError("the adjusted Rand index needs two or more nodes in both partitions")
    a = np.unique([found[n] for n in nodes], return_inverse=True)[1]
    b = np.unique([str(truth[n]) for n in nodes], return_inverse=True)[1]
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    pairs = comb(table, 2).sum()
    rows, cols, total = comb(table.sum(axis=1), 2).sum(), comb(table.sum(axis=0), 2).sum(), comb(len(nodes), 2)
    expected = rows * cols / total
    best = (rows + cols) / 2
    return 1.0 if best == expected else float((pairs - expected) / (best - expected))
