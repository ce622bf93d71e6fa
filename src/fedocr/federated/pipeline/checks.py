"""The server's checks on one update: claimed example count, names, shapes, dtypes, finite
values and an L2 norm bound. A failed check rejects the update with its reason; nothing raises.

FedAvg weights each update by the count its client reports; nothing proves it, so one client
claiming 1e9 examples would take over the average: counts above the bound are rejected (not
capped: a client that lies about its count is not trusted with its update). Integer buffers
(BatchNorm's step counter) are left out of norms: a counter is not a weight.
"""
from __future__ import annotations

from collections.abc import Mapping
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


@dataclass(frozen=True)
class CheckConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"max-update-norm": "max_update_norm", "max-examples": "max_examples"}

    max_update_norm: float = 1e4     # `max-update-norm`: L2 bound on an update's float tensors
    max_examples: int = 1_000_000    # `max-examples`: bound on the example count a client claims

    def __post_init__(self) -> None:
        if not self.max_update_norm > 0:
            raise bad("max-update-norm", "must be positive")
        if self.max_examples < 1:
            raise bad("max-examples", "must be at least 1")


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


def screen_steps(config: CheckConfig) -> list[CheckUpdate]:
    return [CheckUpdate(config)]
