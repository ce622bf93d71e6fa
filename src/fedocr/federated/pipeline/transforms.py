"""Deltas and subsets of named tensors, and the steps that keep some tensors on the node.

`aggregate = "backbone"` (FedPer, Arivazhagan et al. 2019, arXiv:1912.00818): the CNN and
BiLSTM are averaged, each client's CTC head stays on the node. `aggregate = "fedbn"` (FedBN,
Li et al. 2021, arXiv:2102.07623): every BatchNorm layer (scale, shift and running statistics)
stays on the node, so each organisation normalises its own scanners' and printers' features
while the convolutions and the LSTM are shared. The client step keeps its tensors in its state
(on the node's disk), restores them before local training and leaves them out of the update; the
server aggregates and checks only the travelling keys.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Update, Weights

HEAD_PREFIX = "head."   # the CRNN's CTC classifier


def select(weights: Mapping[str, np.ndarray], keys: Iterable[str]) -> Weights:
    """The named subset of a weights mapping (same arrays, new dict)."""
    return {k: weights[k] for k in keys}


def delta(local: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray]) -> Weights:
    """w_local - w_global per key, in each tensor's own dtype (integer buffers stay integers)."""
    # np.asarray: arithmetic on 0-d arrays returns NumPy scalars, which are not arrays to Flower.
    return {k: np.asarray(np.subtract(local[k], global_[k]), dtype=global_[k].dtype) for k in global_}


BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def batch_norm_keys(keys: Iterable[str]) -> set[str]:
    """The tensors of every BatchNorm layer: a layer is one whose `running_mean` is among the keys."""
    keys = list(keys)
    layers = {k[: -len(".running_mean")] for k in keys if k.endswith(".running_mean")}
    return {k for k in keys if k.rpartition(".")[0] in layers}


def local_keys(keys: Iterable[str], aggregate: str) -> set[str]:
    """The tensors that stay on the node: none, the CTC head (FedPer) or the BatchNorm layers (FedBN)."""
    keys = list(keys)
    if aggregate == "all":
        return set()
    if aggregate == "backbone":
        return {k for k in keys if k.startswith(HEAD_PREFIX)}
    if aggregate == "fedbn":
        return batch_norm_keys(keys)
    raise ValueError(f"unknown aggregate {aggregate!r}")


def aggregated_keys(weights: Mapping[str, np.ndarray], aggregate: str) -> list[str]:
    """Keys that travel and are averaged: all but the node's own (`local_keys`)."""
    kept = local_keys(weights, aggregate)
    return [k for k in weights if k not in kept]


AGGREGATES = ("all", "backbone", "fedbn")


@dataclass(frozen=True)
class AggregateConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"aggregate": "aggregate"}

    aggregate: Literal["all", "backbone", "fedbn"] = "all"   # `aggregate`: what travels and is averaged

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise bad("aggregate", f"{self.aggregate!r} is not one of {', '.join(AGGREGATES)}")


@dataclass(frozen=True)
class LocalTensors:
    """Client step: some tensors stay on the node (restored before training, never sent)."""
    aggregate: str          # "backbone" (the CTC head stays) or "fedbn" (the BatchNorm layers stay)
    name: str = "local-head"

    def describe(self) -> str:
        if self.aggregate == "fedbn":
            return "keep every BatchNorm layer (scale, shift, statistics) on the node; send the rest (FedBN)"
        return f"keep tensors {HEAD_PREFIX}* on the node; send the backbone only (FedPer)"

    def start_weights(self, global_weights: Weights, ctx: StepContext) -> Weights:
        own = ctx.state.get("head")
        return {**global_weights, **own} if own else dict(global_weights)

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        # On the client, ctx.reference holds the weights training started from (its own tensors included).
        own = {k: v for k, v in update.tensors.items() if k in local_keys(update.tensors, self.aggregate)}
        # The state key stays "head" for both: node-state files written before FedBN keep loading.
        ctx.state["head"] = {k: np.asarray(ctx.reference[k] + v, dtype=v.dtype) for k, v in own.items()}
        kept = {k: v for k, v in update.tensors.items() if k not in own}
        return update.with_tensors(kept).noted(self.name, kept_local=len(own))


def client_steps(config: AggregateConfig) -> list[LocalTensors]:
    if config.aggregate == "all":
        return []
    return [LocalTensors(config.aggregate, "local-bn" if config.aggregate == "fedbn" else "local-head")]
