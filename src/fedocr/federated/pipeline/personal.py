"""Ditto: a personal model per node, regularised towards the global one (Li et al. 2021,
"Ditto: Fair and Robust Federated Learning Through Personalization", ICML, arXiv:2012.04221).

Each round a node trains the global model as FedAvg does and sends that update, unchanged; then
it trains its own personal model v on the same lines for `personal.epochs`, with the proximal
term lambda/2 * ||v - w_global||^2 added to the loss, and keeps v on its own disk. v never leaves
the node: it is what the node evaluates, serves and exports (`fedocr fl export-personal`). With
lambda large v stays the global model; with lambda = 0 it is a local-only model that started from
the global one. The global model is exactly FedAvg's, so every server step (robust rules, DP,
secure aggregation) works unchanged.

`personal.mix` = a < 1 serves a v + (1 - a) w_global instead of v: the weight-space interpolation
of WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", CVPR,
arXiv:2109.01903), which keeps most of a fine-tuned model's gain on its own data while giving back
less of the start model's accuracy elsewhere than v alone. Training is unchanged: v is kept whole
and mixed only where it is evaluated, served or exported.

This module only keeps v and says how to train it; the training itself (torch) is the ClientApp's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedocr.federated.pipeline.checks import is_float
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Update, Weights

METHODS = ("none", "ditto")


@dataclass(frozen=True)
class PersonalConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"personal.method": "method", "personal.lambda": "lam",
                                      "personal.epochs": "epochs", "personal.mix": "mix"}

    method: str = "none"    # `personal.method`: none, or ditto (a personal model per node)
    lam: float = 0.1        # `personal.lambda`: pull of the personal model towards the global one
    epochs: float = 1.0     # `personal.epochs`: passes over the node's lines for the personal model per round
    mix: float = 1.0        # `personal.mix`: share of the personal model in the one served (the rest: the global)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise bad("personal.method", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if not self.lam >= 0:
            raise bad("personal.lambda", "must be 0 or more")
        if not self.epochs > 0:
            raise bad("personal.epochs", "must be positive")
        if not 0 < self.mix <= 1:
            raise bad("personal.mix", "must be in (0, 1]")


@dataclass(frozen=True)
class DittoPersonal:
    """Client step: keeps the node's personal model; the update itself passes unchanged."""
    config: PersonalConfig
    name: str = "ditto"

    def describe(self) -> str:
        mixed = "" if self.config.mix == 1 else f", served as {self.config.mix:g} of it + the rest of the global model"
        return (f"train a personal model per node ({self.config.epochs:g} epoch(s), proximal lambda "
                f"{self.config.lam:g} towards the global model){mixed}; it stays on the node (Ditto)")

    def personal_start(self, global_weights: Weights, ctx: StepContext) -> Weights:
        """Where this round's personal training starts: last round's personal model, or the global one."""
        own = ctx.state.get("personal")
        return {**global_weights, **own} if own else dict(global_weights)

    def keep(self, personal: Weights, ctx: StepContext) -> None:
        ctx.state["personal"] = dict(personal)

    def personal_weights(self, global_weights: Weights, ctx: StepContext) -> Weights:
        """What the node evaluates and serves: its personal model once it has one, mixed with the
        global one by `personal.mix` (counters such as BatchNorm's batch count are the personal model's)."""
        own, a = self.personal_start(global_weights, ctx), self.config.mix
        if a == 1 or "personal" not in ctx.state:
            return own
        return {k: (a * v + (1 - a) * global_weights[k]).astype(v.dtype) if is_float(v) and k in global_weights else v
                for k, v in own.items()}

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        return update.noted(self.name, has_personal_model="personal" in ctx.state)


def client_steps(config: PersonalConfig) -> list[DittoPersonal]:
    return [DittoPersonal(config)] if config.method == "ditto" else []
