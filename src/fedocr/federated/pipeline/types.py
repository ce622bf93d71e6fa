"""The update pipeline's types: an update, what a step did, a step's context, the step protocols.

docs/ARCHITECTURE.md ("The update pipeline"): everything between "the client finished training" and "the
server changed w" is a chain of small steps over named tensors. A client step takes an `Update`
and returns a new one (clip, noise, compress, protect); on the server a screening step does the
same for each reply (decode, check, score), an `Aggregator` turns the screened updates into one
step, `StepTransform`s change that step (server noise, momentum), an `Applier` moves w, and a
`Gate` commits or rolls back the candidate after validation.

Steps never mutate their inputs and draw randomness only from `StepContext.rng`; what they must
remember between rounds lives in `StepContext.state`, which the chain's owner checkpoints (the
server with its state, a node on its own disk). NumPy only: no Flower, no torch.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

Weights = dict[str, np.ndarray]
StepState = dict[str, Any]     # a step's persistent state: NumPy arrays, Weights or JSON-able scalars
SERVER = "*"                   # the "client" of a record that a server-level step writes


@dataclass(frozen=True)
class StepRecord:
    """What one step did to one update (or, with client SERVER, to the round): JSON-able info."""
    step: str
    client: str
    info: Mapping[str, Any]


@dataclass(frozen=True)
class Update:
    """One client's contribution as it moves along the chain: its tensors (a delta, or an
    encoding of one), the example count FedAvg weights it by, its training metrics, extra
    fields of the reply (`meta`, e.g. the vocabulary version it claims), what each step did,
    and why it was rejected (None while it is fit)."""
    client: str
    tensors: Weights
    examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)
    records: tuple[StepRecord, ...] = ()
    rejected: str | None = None

    def renamed(self, client: str) -> "Update":
        """The same update filed under `client` (the server makes names unique per round)."""
        return replace(self, client=client, records=tuple(replace(r, client=client) for r in self.records))

    def with_tensors(self, tensors: Weights) -> "Update":
        return replace(self, tensors=tensors)

    def noted(self, step: str, **info: Any) -> "Update":
        return replace(self, records=self.records + (StepRecord(step, self.client, info),))

    def reject(self, step: str, reason: str) -> "Update":
        return replace(self, rejected=reason, records=self.records + (StepRecord(step, self.client,
                                                                                 {"rejected": reason}),))


@dataclass
class StepContext:
    """What a step may use beyond its input: the round, the tensors an update must match
    (`reference`: the global model's travelling tensors), its own random stream and state."""
    round: int
    rng: np.random.Generator
    state: StepState
    reference: Mapping[str, np.ndarray] = field(default_factory=dict)
    notes: list[StepRecord] = field(default_factory=list)   # server-level records of this call
    cohort: "Cohort | None" = None   # on the server: who took part in the round (DP noise and accounting)
    # On the server: the metrics ("val_loss", "val_cer") of candidate weights on its validation lines.
    # The evaluation needs torch, so the server injects it; None where it validates nothing.
    evaluate: "Callable[[Weights], Mapping[str, float]] | None" = None
    # On the server: its own update this round, trained on its root lines (FLTrust's reference
    # direction); injected like `evaluate`, None where the server trains nothing.
    server_update: "Callable[[], Weights] | None" = None
    # On a node: what the server's task says to the client steps (e.g. HE's shared index set).
    task: Mapping[str, Any] = field(default_factory=dict)

    def note(self, step: str, **info: Any) -> None:
        self.notes.append(StepRecord(step, SERVER, info))


@dataclass(frozen=True)
class Cohort:
    """A server round's participation: nodes available, sampled, and updates aggregated."""
    available: int
    sampled: int
    aggregated: int = 0

    @property
    def sampling_rate(self) -> float:
        return self.sampled / self.available if self.available else 1.0


class Step(Protocol):
    """Every step: a name (its records and state are filed under it) and a frozen config."""
    name: str

    def describe(self) -> str:
        """One line: the step's settings, as `fedocr fl steps` prints them."""
        ...


class ClientStep(Step, Protocol):
    def __call__(self, update: Update, ctx: StepContext) -> Update: ...


class BeforeTraining(Step, Protocol):
    """A client step that also shapes the weights local training starts from (a personal head)."""
    def start_weights(self, global_weights: Weights, ctx: StepContext) -> Weights: ...


class ScreenStep(Step, Protocol):
    """A server step over one reply: decode, check, score. A fit update comes back with
    `rejected` set instead of raising."""
    def __call__(self, update: Update, ctx: StepContext) -> Update: ...


class RoundScorer(Step, Protocol):
    """A server step over all of a round's accepted updates that only records (contribution):
    `propose(subset)` gives the candidate weights a subset of the updates would make."""
    def __call__(self, updates: Sequence[Update], propose: Callable[[Sequence[Update]], Weights],
                 ctx: StepContext) -> None: ...


@dataclass(frozen=True)
class Aggregate:
    """An aggregator's result: the step to apply to w, each client's share of it, and the
    clients it left out after seeing all updates (with why)."""
    step: Weights
    shares: Mapping[str, float]
    left_out: Mapping[str, str] = field(default_factory=dict)


class Aggregator(Step, Protocol):
    def __call__(self, updates: Sequence[Update], ctx: StepContext) -> Aggregate: ...


class StepTransform(Step, Protocol):
    """A server step over the aggregated step (server-side DP noise, momentum)."""
    def __call__(self, step: Weights, ctx: StepContext) -> Weights: ...


class Applier(Step, Protocol):
    def __call__(self, weights: Mapping[str, np.ndarray], step: Weights, ctx: StepContext) -> Weights: ...


@dataclass(frozen=True)
class Verdict:
    commit: bool
    reason: str | None = None


class Gate(Step, Protocol):
    """Commit the validated candidate, or keep the committed model (roll back)."""
    def __call__(self, candidate_cer: float | None, committed_cer: float | None, ctx: StepContext) -> Verdict: ...
