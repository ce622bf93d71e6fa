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
into k groups (average-linkage, SciPy). Each group's aggregate (the configured rule) seeds its
cluster's model, once every group has `min-accepted` updates and commits (else the split waits
for a later round); from the next round on, the nodes choose (and may change) their cluster by loss.

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
    KEYS: ClassVar[dict[str, str]] = {"cluster.method": "method", "cluster.k": "k",
                                      "cluster.split-round": "split_round", "cluster.pick-lines": "pick_lines"}

    method: str = "none"    # `cluster.method`: none, or ifca (k models; each node picks by its loss)
    k: int = 2              # `cluster.k`: the number of cluster models
    split_round: int = 1    # `cluster.split-round`: the round whose updates split the one model into k
    pick_lines: int = 64    # `cluster.pick-lines`: training lines a node scores the k models on

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise bad("cluster.method", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if self.k < 2:
            raise bad("cluster.k", "must be 2 or more (one cluster is plain FedAvg: cluster.method=none)")
        if self.split_round < 1:
            raise bad("cluster.split-round", "must be 1 or more")
        if self.pick_lines < 1:
            raise bad("cluster.pick-lines", "must be 1 or more")

    @property
    def active(self) -> bool:
        return self.method != "none"

    def describe(self) -> str:
        return (f"IFCA: {self.k} cluster models, split at round {self.split_round} by the cosine similarity of "
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


def split(updates: Sequence[Update], k: int) -> dict[str, int]:
    """Each update's group of k: average-linkage clustering of the centred updates by cosine
    distance. Groups are numbered in the order their first member appears by client name, so a
    seed gives the same numbering. An update equal to the mean (nothing of its own) is at distance
    1 from every other; fewer updates than k give fewer groups."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    ordered = sorted(updates, key=lambda u: u.client)
    if len(ordered) < 2:
        return {u.client: 0 for u in ordered}
    # Float tensors only: an integer buffer (BatchNorm's step counter) moves alike for every node.
    keys = sorted(k for k in set.intersection(*(set(u.tensors) for u in ordered))
                  if np.issubdtype(np.asarray(ordered[0].tensors[k]).dtype, np.floating))
    vectors = np.stack([flat(u, keys) for u in ordered])
    vectors -= vectors.mean(axis=0)
    norms = np.linalg.norm(vectors, axis=1)
    vectors /= np.where(norms > 0, norms, 1.0)[:, None]
    distances = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    labels = fcluster(linkage(squareform(distances, checks=False), method="average"), t=k, criterion="maxclust")
    renumber: dict[int, int] = {}
    return {u.client: renumber.setdefault(int(label), len(renumber)) for u, label in zip(ordered, labels)}


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
