"""Deltas and subsets of named tensors, and the personal-head step (FedPer).

`aggregate = "backbone"` (FedPer, Arivazhagan et al. 2019, arXiv:1912.00818): the CNN and
BiLSTM are averaged, each client's CTC head stays on the node. The client step keeps the head
in its state (on the node's disk), restores it before local training and leaves it out of the
update; the server aggregates and checks only the travelling keys.
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


def aggregated_keys(weights: Mapping[str, np.ndarray], aggregate: str) -> list[str]:
    """Keys that travel and are averaged: all, or the backbone without the CTC head."""
    if aggregate == "all":
        return list(weights)
    if aggregate == "backbone":
        return [k for k in weights if not k.startswith(HEAD_PREFIX)]
    raise ValueError(f"unknown aggregate {aggregate!r}")


@dataclass(frozen=True)
class AggregateConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"aggregate": "aggregate"}

    aggregate: Literal["all", "backbone"] = "all"   # `aggregate`: what travels and is averaged

    def __post_init__(self) -> None:
        if self.aggregate not in ("all", "backbone"):
            raise bad("aggregate", f"{self.aggregate!r} is not 'all' or 'backbone'")


@dataclass(frozen=True)
class LocalHead:
    """Client step: the CTC head stays on the node (restored before training, never sent)."""
    name: str = "local-head"

    def describe(self) -> str:
        return f"keep tensors {HEAD_PREFIX}* on the node; send the backbone only (FedPer)"

    def start_weights(self, global_weights: Weights, ctx: StepContext) -> Weights:
        head = ctx.state.get("head")
        return {**global_weights, **head} if head else dict(global_weights)

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        # On the client, ctx.reference holds the weights training started from (personal head included).
        head = {k: v for k, v in update.tensors.items() if k.startswith(HEAD_PREFIX)}
        ctx.state["head"] = {k: np.asarray(ctx.reference[k] + v, dtype=v.dtype) for k, v in head.items()}
        kept = {k: v for k, v in update.tensors.items() if k not in head}
        return update.with_tensors(kept).noted(self.name, kept_local=len(head))


def client_steps(config: AggregateConfig) -> list[LocalHead]:
    return [LocalHead()] if config.aggregate == "backbone" else []
