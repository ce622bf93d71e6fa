"""Aggregating the screened updates into the server's step, and applying it to w.

FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017, arXiv:1602.05629): the step is the example-weighted mean of the deltas,
applied as w <- w + server_lr * step (server_lr 1 is plain FedAvg). FedAvgM (Hsu et al., 2019,
"Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification")
steps along a server velocity v <- beta * v + step instead.

Integer buffers (BatchNorm's `num_batches_tracked`) are averaged in float64 and rounded back to
their dtype; BatchNorm's running statistics are averages, not parameters to step along, so they
always take the plain mean (an extrapolated variance can turn negative) and are never
accumulated into the velocity.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedocr.federated.pipeline.checks import capped_examples, is_float, is_statistic
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import Aggregate, StepContext, StepRecord, Update, Weights


def weighted_average(updates: Sequence[tuple[Mapping[str, np.ndarray], int]]) -> Weights:
    """sum_k n_k / n * delta_k, with n = sum_k n_k (FedAvg's example weighting).

    Float tensors are averaged in float64 and cast back to their dtype; integer tensors are
    rounded to the nearest integer and keep their dtype. The sum runs in the given order:
    callers sort, so that a run does not depend on the order replies arrived in.
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


def apply_update(global_: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray],
                 server_lr: float = 1.0) -> Weights:
    """w + server_lr * update for the updated parameters (statistics take the plain mean);
    other keys are copied unchanged."""
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
    """FedAvgM's server velocity, v <- beta * v + mean delta (statistics and integer buffers take
    this round's mean)."""
    out: Weights = {}
    for key, delta in update.items():
        previous = None if velocity is None or is_statistic(key) or not is_float(delta) else velocity.get(key)
        out[key] = delta.copy() if previous is None else np.asarray(beta * previous + delta, dtype=delta.dtype)
    return out


def example_weights(updates: Sequence[Update], ratio: float, ctx: StepContext, step: str) -> list[int]:
    """The counts FedAvg weighs `updates` by: each claim capped at `ratio` x the round's median
    claim (checks.capped_examples); a node whose claim was capped gets a record saying so."""
    counts = capped_examples([u.examples for u in updates], ratio)
    for u, n in zip(updates, counts):
        if n < u.examples:
            ctx.notes.append(StepRecord(step, u.client, {"claimed_examples": u.examples, "counted_examples": n}))
    return counts


@dataclass(frozen=True)
class FedAvg:
    """The example-weighted mean of the accepted deltas, summed in client-name order."""
    examples_ratio: float = 0.0   # checks' `max-examples-ratio`: a claim counts for at most this x the median
    name: str = "fedavg"

    def describe(self) -> str:
        cap = f", each claim capped at {self.examples_ratio:g}x the median" if self.examples_ratio else ""
        return f"example-weighted mean of the deltas (FedAvg){cap}"

    def __call__(self, updates: Sequence[Update], ctx: StepContext) -> Aggregate:
        ordered = sorted(updates, key=lambda u: u.client)
        counts = example_weights(ordered, self.examples_ratio, ctx, self.name)
        step = weighted_average(list(zip((u.tensors for u in ordered), counts)))
        return Aggregate(step, {u.client: n / sum(counts) for u, n in zip(ordered, counts)})


@dataclass(frozen=True)
class MomentumConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"server-momentum": "momentum"}

    momentum: float = 0.0   # `server-momentum`: FedAvgM's beta (0: plain FedAvg)

    def __post_init__(self) -> None:
        if not 0 <= self.momentum <= 0.99:
            raise bad("server-momentum", "must be in [0, 0.99] (the step grows as 1 / (1 - momentum))")


@dataclass(frozen=True)
class ServerMomentum:
    """FedAvgM: the step becomes the server velocity, kept in this step's state."""
    config: MomentumConfig
    name: str = "fedavgm"

    def describe(self) -> str:
        return f"server momentum beta={self.config.momentum:g} (FedAvgM)"

    def __call__(self, step: Weights, ctx: StepContext) -> Weights:
        velocity = server_momentum(ctx.state.get("velocity"), step, self.config.momentum)
        ctx.state["velocity"] = velocity
        return velocity


@dataclass(frozen=True)
class ApplyConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"server-lr": "server_lr"}

    server_lr: float = 1.0  # `server-lr`: w <- w + server_lr * step

    def __post_init__(self) -> None:
        if not 0 < self.server_lr <= 10:
            raise bad("server-lr", "must be in (0, 10]")


@dataclass(frozen=True)
class ApplyStep:
    config: ApplyConfig
    name: str = "apply"

    def describe(self) -> str:
        return f"w <- w + {self.config.server_lr:g} * step (BatchNorm statistics take the mean)"

    def __call__(self, weights: Mapping[str, np.ndarray], step: Weights, ctx: StepContext) -> Weights:
        return apply_update(weights, step, self.config.server_lr)


def transform_steps(config: MomentumConfig) -> list[ServerMomentum]:
    return [ServerMomentum(config)] if config.momentum else []
