"""The server's checks on one update: claimed example count, names, shapes, dtypes, finite
values and an L2 norm bound; then whether it replays an update the node sent before. A failed
check rejects the update with its reason; nothing raises.

FedAvg weights each update by the count its client reports; nothing proves it, so one client
claiming 1e9 examples would take over the average: counts above the absolute bound are rejected
(a client that lies that much is not trusted with its update), and within it a claim counts for
at most `max-examples-ratio` times the round's median claim (`capped_examples`, applied by the
example-weighted aggregators). Integer buffers (BatchNorm's step counter) are left out of norms:
a counter is not a weight.

The absolute norm bound is the operator's; within it, an update more than `max-norm-ratio` times
the median norm of the updates screened in the last NORM_ROUNDS rounds is rejected too (once
MIN_NORMS norms are known): honest norms spread over a few times each other, and a boosted
update (model replacement, Bagdasaryan et al. 2020) is hundreds of times larger. The bound
follows the honest norms as the learning rate decays; it cannot see an attacker who stays within
it, which is what the robust rules are for.

A replayed update (a free rider resending an old delta instead of training, or a reply stuck in
a queue) is recognised by its digest: the server keeps each node's update digests of the last
`replay-window` rounds, and an update identical to one of them is rejected.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Update


def is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def is_statistic(key: str) -> bool:
    """BatchNorm's running mean/variance and step count: averages, not parameters to step along."""
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


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
    """Why a claimed example count must not weight an average, or None when it is plausible."""
    if examples <= 0:
        return "update claims no training examples"
    if examples > max_examples:
        return f"claims {examples} training examples, above the bound max-examples={max_examples}"
    return None


def capped_examples(claims: Sequence[int], ratio: float) -> list[int]:
    """Each claimed count, capped at `ratio` x the median claim (0: uncapped). The median is robust
    once three or more nodes take part: a liar cannot raise its own cap by claiming more."""
    if not ratio or not claims:
        return list(claims)
    cap = max(1, int(ratio * float(np.median(claims))))
    return [min(c, cap) for c in claims]


def tensor_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """A short SHA-256 of named tensors: their names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        array = np.ascontiguousarray(tensors[key])
        h.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:20]


NORM_ROUNDS = 5   # rounds of screened norms the adaptive bound looks back over
MIN_NORMS = 3     # ... and how many it needs before it rejects anything


@dataclass(frozen=True)
class CheckConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"max-update-norm": "max_update_norm", "max-examples": "max_examples",
                                      "max-examples-ratio": "max_examples_ratio", "replay-window": "replay_window",
                                      "max-norm-ratio": "max_norm_ratio"}

    max_update_norm: float = 1e4     # `max-update-norm`: L2 bound on an update's float tensors
    max_examples: int = 1_000_000    # `max-examples`: bound on the example count a client claims
    max_examples_ratio: float = 10.0  # `max-examples-ratio`: a claim weighs at most this x the round's median (0: off)
    replay_window: int = 10          # `replay-window`: rounds of each node's update digests kept (0: off)
    max_norm_ratio: float = 10.0     # `max-norm-ratio`: reject above this x the median recent norm (0: off)

    def __post_init__(self) -> None:
        if not self.max_update_norm > 0:
            raise bad("max-update-norm", "must be positive")
        if self.max_examples < 1:
            raise bad("max-examples", "must be at least 1")
        if self.max_examples_ratio and self.max_examples_ratio < 1:
            raise bad("max-examples-ratio", "below 1 would cap the median node itself; 0 turns the cap off")
        if self.max_norm_ratio and self.max_norm_ratio < 2:
            raise bad("max-norm-ratio", "below 2 would reject honest updates (their norms spread over a few times "
                                        "each other); 0 turns the adaptive bound off")
        if self.replay_window < 0:
            raise bad("replay-window", "must be 0 (off) or a number of rounds")


@dataclass(frozen=True)
class CheckUpdate:
    """Screening step: example count, then the tensors against the global model's."""
    config: CheckConfig
    name: str = "check"

    def describe(self) -> str:
        return (f"names, shapes, dtypes, finite values; L2 norm <= {self.config.max_update_norm:g}; "
                f"1 <= claimed examples <= {self.config.max_examples}")

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        reason = check_examples(update.examples, self.config.max_examples)
        if reason:
            return update.reject(self.name, reason)
        reason = check_update(update.tensors, ctx.reference, self.config.max_update_norm)
        if reason is None or reason.startswith("update norm"):  # the norm means something only then
            update = update.noted(self.name, norm=l2_norm(update.tensors))
        return update.reject(self.name, reason) if reason else update


@dataclass(frozen=True)
class AdaptiveNormBound:
    """Screening step: reject an update above `max-norm-ratio` x the median norm of the updates
    this step passed in the last NORM_ROUNDS rounds; its state keeps [round, norm] pairs."""
    config: CheckConfig
    name: str = "norm-bound"

    def describe(self) -> str:
        return (f"reject an update above {self.config.max_norm_ratio:g}x the median norm of the last {NORM_ROUNDS} "
                f"rounds' updates (once {MIN_NORMS} are known)")

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        history: list[list[float]] = ctx.state.setdefault("norms", [])
        history[:] = [h for h in history if h[0] > ctx.round - NORM_ROUNDS]
        recent = [n for r, n in history if r < ctx.round]   # not this round's: the order replies came in must not matter
        norm = l2_norm(update.tensors)
        if len(recent) >= MIN_NORMS:
            bound = self.config.max_norm_ratio * float(np.median(recent))
            if norm > bound:
                return update.reject(self.name, f"update norm {norm:.4g} above {self.config.max_norm_ratio:g} x the "
                                                f"median of recent norms ({bound:.4g})")
        history.append([ctx.round, norm])
        return update


@dataclass(frozen=True)
class RejectReplay:
    """Screening step: an update identical to one this node sent in the last `replay-window`
    rounds is rejected; its state keeps {node: {digest: round}}."""
    config: CheckConfig
    name: str = "replay"

    def describe(self) -> str:
        return f"reject an update identical to one the node sent in the last {self.config.replay_window} rounds"

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        seen: dict[str, int] = ctx.state.setdefault(update.client, {})
        for digest, rnd in list(seen.items()):   # forget what fell out of the window
            if rnd <= ctx.round - self.config.replay_window:
                del seen[digest]
        digest = tensor_digest(update.tensors)
        earlier = seen.get(digest)
        if earlier is not None and earlier != ctx.round:
            return update.reject(self.name, f"replayed update: identical to the one it sent in round {earlier}")
        seen[digest] = ctx.round
        return update


def screen_steps(config: CheckConfig) -> list[CheckUpdate | AdaptiveNormBound | RejectReplay]:
    return [CheckUpdate(config), *([AdaptiveNormBound(config)] if config.max_norm_ratio else []),
            *([RejectReplay(config)] if config.replay_window else [])]
