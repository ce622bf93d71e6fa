"""Secure aggregation: the server learns only the (weighted) sum of the round's updates.

The protocol is Flower's SecAgg+ (Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020): each sampled node masks its quantised update with pairwise masks agreed with
its neighbours and a private mask, and secret-shares the seeds among `secure.shares` neighbours so
that the server can remove the masks of nodes that drop out, as long as `secure.threshold` shares of
each node reach it. No cryptography here: Flower's `secaggplus_mod` does the node's part and its
`SecAggPlusWorkflow` the server's (`federated/secagg.py` drives it); this module is the chain's
view of it, NumPy only: the settings, the client step that marks the update as leaving masked, and
the server step that records what the server received instead of individual updates.

What changes for the server: its checks (names, shapes, finite values, norm bound) see the
weighted mean, not a node's update; each node's claimed example count and training metrics stay in
the clear (SecAgg+ weights the masked vectors by them). Steps that need one node's update (robust
rules, per-node anomaly scores, leave-one-out contribution) are refused or disabled with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Update

METHODS = ("none", "secagg+", "ckks")


@dataclass(frozen=True)
class SecureConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"secure.method": "method", "secure.shares": "shares",
                                       "secure.threshold": "threshold", "secure.clip-range": "clip_range",
                                       "secure.max-weight": "max_weight"}

    method: str = "none"        # `secure.method`: none, secagg+ (Flower's SecAgg+) or ckks (HE, pipeline.he)
    shares: float = 1.0         # `secure.shares`: neighbours each node shares its secrets with (<= 1: share of the sampled)
    threshold: float = 0.5      # `secure.threshold`: shares that rebuild a secret (< 1: share of secure.shares)
    clip_range: float = 8.0     # `secure.clip-range`: each weighted entry is clipped to +-this before quantising
    max_weight: float = 1000.0  # `secure.max-weight`: the example count that weighs 1 (about the largest node's)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise bad("secure.method", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if not (0 < self.shares <= 1 or (self.shares.is_integer() and self.shares >= 3)):
            raise bad("secure.shares", "must be a share of the sampled nodes in (0, 1] or a whole number >= 3")
        if not (0 < self.threshold < 1 or (self.threshold.is_integer() and self.threshold >= 2)):
            raise bad("secure.threshold", "must be a share of secure.shares in (0, 1) or a whole number >= 2 "
                                          "(one share would let any single neighbour unmask a node)")
        if self.shares > 1 and self.threshold >= 1 and self.threshold >= self.shares:
            raise bad("secure.threshold", f"{self.threshold:g} shares can never be met with secure.shares="
                                          f"{self.shares:g} (it must be smaller)")
        if not self.clip_range > 0:
            raise bad("secure.clip-range", "must be positive")
        if not self.max_weight > 0:
            raise bad("secure.max-weight", "must be positive")

    def flower_shares(self) -> int | float:
        """`num_shares` as Flower reads it: a float is a proportion of the sampled nodes."""
        return self.shares if self.shares <= 1 else int(self.shares)

    def flower_threshold(self) -> int | float:
        return self.threshold if self.threshold < 1 else int(self.threshold)


# The fewest sampled nodes a secure round runs with: with two, each learns the other's update from the sum.
MIN_NODES = 3


@dataclass(frozen=True)
class MaskForSecAgg:
    """Client step: the update leaves dense and unencoded, for Flower's SecAgg+ mod to quantise and
    mask after the handler returns (the mask is the last thing done to it)."""
    config: SecureConfig
    name: str = "secagg+"
    hides_updates: bool = True

    def describe(self) -> str:
        return (f"masked by Flower's SecAgg+ mod (weight examples/{self.config.max_weight:g}, entries clipped to "
                f"+-{self.config.clip_range:g}, quantised to 2^22 levels): the server sees only the sum")

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        return update.noted(self.name, max_weight=self.config.max_weight,
                            weight=min(1.0, update.examples / self.config.max_weight))


@dataclass(frozen=True)
class SecureSum:
    """Server decoding step: the round's one "update" is the weighted mean Flower's SecAgg+
    workflow unmasked; what the server could not see is recorded by the collector, not here."""
    config: SecureConfig
    name: str = "secagg+"
    hides_updates: bool = True

    def describe(self) -> str:
        return (f"Flower's SecAgg+ workflow unmasks the weighted mean of the sampled nodes' updates "
                f"(shares {self.config.shares:g}, threshold {self.config.threshold:g}); the steps below see that mean")

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        return update


def client_steps(config: SecureConfig) -> list[Any]:
    return [MaskForSecAgg(config)] if config.method == "secagg+" else []


def decode_steps(config: SecureConfig) -> list[Any]:
    return [SecureSum(config)] if config.method == "secagg+" else []
