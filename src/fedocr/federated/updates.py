"""The update pipeline's pure steps over named tensors (DESIGN.md, "The update pipeline").

An update is a `Weights` mapping (parameter or buffer name -> NumPy array). Every step returns new
arrays and never mutates its inputs, so steps compose freely and tests can compare before/after.
FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017, arXiv:1602.05629) is the chain with no optional steps:

    client:  delta = w_local - w_global
    server:  check each delta -> weighted_average(deltas, example counts) -> apply to w

Later features (clipping, DP noise, compression, secure aggregation, robust aggregation) are new
steps inserted in this chain, not forks of it.

Integer buffers (BatchNorm's `num_batches_tracked`, int64) are handled on purpose: their deltas
are exact integers, averaged in float64 and rounded back to the buffer's dtype, and they are left
out of norms (a step counter is not a weight and must not trip the norm bound).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Weights = dict[str, np.ndarray]

HEAD_PREFIX = "head."   # the CRNN's CTC classifier; "backbone" aggregation keeps it on the client


def is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def select(weights: Mapping[str, np.ndarray], keys: Iterable[str]) -> Weights:
    """The named subset of a weights mapping (same arrays, new dict)."""
    return {k: weights[k] for k in keys}


def aggregated_keys(weights: Mapping[str, np.ndarray], aggregate: str) -> list[str]:
    """Keys that travel and are averaged: all, or the backbone without the CTC head (FedPer,
    Arivazhagan et al. 2019, arXiv:1912.00818)."""
    if aggregate == "all":
        return list(weights)
    if aggregate == "backbone":
        return [k for k in weights if not k.startswith(HEAD_PREFIX)]
    raise ValueError(f"unknown aggregate {aggregate!r}")


def delta(local: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray]) -> Weights:
    """w_local - w_global per key, in each tensor's own dtype (integer buffers stay integers)."""
    # np.asarray: arithmetic on 0-d arrays returns NumPy scalars, which are not arrays to Flower.
    return {k: np.asarray(np.subtract(local[k], global_[k]), dtype=global_[k].dtype) for k in global_}


def l2_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm over the float tensors (integer buffers are counters, not weights)."""
    total = 0.0
    for array in update.values():
        if is_float(array):
            total += float(np.sum(np.square(array, dtype=np.float64)))
    return float(np.sqrt(total))


def check_update(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                 max_norm: float) -> str | None:
    """Why this update must not be aggregated, or None when it is fit.

    `reference` holds the global tensors the update must match in names, shapes and dtypes.
    """
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing or extra:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else ""]
        return "wrong tensors: " + ", ".join(p for p in parts if p)
    for key, ref in reference.items():
        array = update[key]
        if array.shape != ref.shape:
            return f"wrong shape for {key}: {tuple(array.shape)}, expected {tuple(ref.shape)}"
        if array.dtype != ref.dtype:
            return f"wrong dtype for {key}: {array.dtype}, expected {ref.dtype}"
    for key, array in update.items():
        if is_float(array) and not np.all(np.isfinite(array)):
            return f"non-finite values (NaN/Inf) in {key}"
    norm = l2_norm(update)
    if norm > max_norm:
        return f"update norm {norm:.4g} above bound {max_norm:.4g}"
    return None


def check_examples(examples: int, max_examples: int) -> str | None:
    """Why a claimed example count must not weight an average, or None when it is plausible.

    FedAvg weights each update by the count its client reports; nothing proves it, so one client
    claiming 1e9 examples would take over the average. Counts above the configured bound are
    rejected (not capped: a client that lies about its count is not trusted with its update).
    """
    if examples <= 0:
        return "update claims no training examples"
    if examples > max_examples:
        return f"claims {examples} training examples, above the bound max-examples={max_examples}"
    return None


def weighted_average(updates: Sequence[tuple[Mapping[str, np.ndarray], int]]) -> Weights:
    """sum_k n_k / n * delta_k, with n = sum_k n_k (FedAvg's example weighting).

    Float tensors are averaged in float64 and cast back to their dtype; integer tensors are
    rounded to the nearest integer and keep their dtype.
    """
    if not updates:
        raise ValueError("no updates to average")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("updates carry no examples")
    first = updates[0][0]
    out: Weights = {}
    for key, ref in first.items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for update, n in updates:
            acc += (n / total) * update[key].astype(np.float64)
        out[key] = np.asarray(acc if is_float(ref) else np.rint(acc), dtype=ref.dtype)
    return out


def is_statistic(key: str) -> bool:
    """BatchNorm's running mean/variance and step count: averages, not parameters to step along."""
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


def apply_update(global_: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray],
                 server_lr: float = 1.0) -> Weights:
    """w + server_lr * update for the updated parameters (statistics take the plain mean, since
    an extrapolated variance can turn negative); other keys are copied unchanged."""
    out: Weights = {}
    for key, weight in global_.items():
        if key not in update:
            out[key] = weight.copy()
            continue
        rate = 1.0 if is_statistic(key) else server_lr
        if is_float(weight):
            out[key] = np.asarray(weight + rate * update[key], dtype=weight.dtype)
        else:
            out[key] = np.asarray(weight + np.rint(rate * update[key]), dtype=weight.dtype)
    return out


def server_momentum(velocity: Mapping[str, np.ndarray] | None, update: Mapping[str, np.ndarray],
                    beta: float) -> Weights:
    """FedAvgM's server velocity, v <- beta * v + mean delta, which the server then applies instead
    of the mean delta (Hsu et al., 2019, "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification"). BatchNorm statistics and integer buffers are averages,
    not steps, so they are never accumulated: they take this round's mean."""
    out: Weights = {}
    for key, delta in update.items():
        previous = None if velocity is None or is_statistic(key) or not is_float(delta) else velocity.get(key)
        out[key] = delta.copy() if previous is None else np.asarray(beta * previous + delta, dtype=delta.dtype)
    return out


def sample_clients(node_ids: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """k distinct node ids drawn uniformly (sorted input so a seed gives the same draw)."""
    ordered = sorted(node_ids)
    if k >= len(ordered):
        return ordered
    return sorted(int(i) for i in rng.choice(ordered, size=k, replace=False))


def payload_bytes(weights: Mapping[str, np.ndarray]) -> int:
    """Bytes of tensor data a message carries (Flower adds a small per-array header)."""
    return int(sum(a.nbytes for a in weights.values()))
