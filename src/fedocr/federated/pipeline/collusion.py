"""Colluding nodes: several nodes of one attacker that send the same crafted update, round after
round (sybils).

Each of them can stay inside the honest spread, where a trimmed mean keeps it ("a little is
enough", Baruch et al. 2019), and a steady push in one direction adds up over the rounds. But
independent organisations do not point the same way round after round. FoolsGold (Fung, Yoon
and Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020,
arXiv:1808.04866) uses that signal: the cosine similarity of each node's accumulated updates.
This module keeps that accumulation per node and names the nodes whose history matches another
node's at or above a threshold; the robust aggregator leaves all of them out, since no member of
such a group is more honest than the others. FoolsGold turns the similarity into a weight for
every node; a threshold leaves honest branches of one organisation alone (on ten-branches-mini
their histories reached a cosine of 0.86 in 12 rounds, identical colluders 1.0) but misses
colluders who add enough independent noise to stay below it.

A node's history is a count sketch (Charikar, Chen and Farach-Colton 2002) of the sum of its
unit-length updates: SKETCH_DIMS numbers per node whatever the model's size, inner products
estimated without bias, identical updates mapped to identical sketches. Summing unit-length
updates makes every round weigh alike, so one large update does not decide a node's history.
NumPy only.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from fedocr.federated.pipeline.checks import is_float, is_statistic

SKETCH_DIMS = 16_384   # cosine error ~ 1/sqrt(dims) < 0.01; 64 KB of state per node


@lru_cache(maxsize=256)
def _buckets(key: str, size: int, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each coordinate of tensor `key` lands in the sketch, and with which sign: fixed by
    the key's name, so every node and every round agree."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return rng.integers(0, dims, size, dtype=np.int32), rng.choice(np.array([-1, 1], dtype=np.int8), size)


def sketch(tensors: Mapping[str, np.ndarray], dims: int = SKETCH_DIMS) -> np.ndarray:
    """The update's count sketch over its float parameters (BatchNorm's running statistics are
    not a direction anyone trains)."""
    out = np.zeros(dims)
    for key in sorted(tensors):
        value = tensors[key]
        if is_float(value) and not is_statistic(key):
            index, sign = _buckets(key, value.size, dims)
            out += np.bincount(index, weights=sign * value.astype(np.float64).ravel(), minlength=dims)
    return out


def remember(history: dict[str, np.ndarray], client: str, tensors: Mapping[str, np.ndarray]) -> None:
    """Add the update's direction to `client`'s history (a zero update adds nothing)."""
    direction = sketch(tensors)
    norm = float(np.linalg.norm(direction))
    if norm > 0:
        history[client] = (history.get(client, 0.0) + direction / norm).astype(np.float32)


def closest(history: Mapping[str, np.ndarray], clients: Sequence[str]) -> dict[str, tuple[str, float]]:
    """For each of `clients` with a history, the other node whose history points most nearly the
    same way (any node ever seen, so a colluder sampled alone is still matched), and the cosine."""
    names = sorted(history)
    if len(names) < 2:
        return {}
    stacked = np.stack([history[n].astype(np.float64) for n in names])
    unit = stacked / np.maximum(np.linalg.norm(stacked, axis=1, keepdims=True), 1e-30)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    found = {}
    for client in clients:
        if client in history:
            row = cos[names.index(client)]
            best = int(np.argmax(row))
            found[client] = (names[best], float(row[best]))
    return found
