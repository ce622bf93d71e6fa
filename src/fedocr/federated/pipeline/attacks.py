"""Attacks, a simulation-only client step: named nodes turn malicious, so the server's defences
are measured against the real chain instead of a mock (the model: `drills`).

`attack.nodes = "bank-2:sign-flip,school-3:boost"` names each attacker and what it does from
round `attack.from-round` on. Update attacks change the delta the node sends:

- `sign-flip`: -delta (the honest step, reversed).
- `boost`: gamma * delta, gamma = `attack.scale`: model replacement (Bagdasaryan et al., "How To
  Backdoor Federated Learning", AISTATS 2020, arXiv:1807.00459) boosts by about n / server-lr so
  that its update survives averaging with n - 1 honest ones.
- `noise`: Gaussian noise of gamma times the honest update's norm, instead of the update.
- `free-rider`: replays the first delta it computed (zeros when it has none) while claiming its
  examples, so it is paid for work it did not do.
- `collude`: every colluder sends the same crafted update, built from what all of them share (the
  global model): a push of w towards zero. Identical updates sit next to each other, which is
  what Krum's nearest-neighbour score rewards.

A smart attacker knows the server's norm bound: every crafted update is scaled to just under
`max-update-norm` rather than being trivially rejected. Data attacks (`label-shuffle`,
`backdoor`) change what the node trains on (`federated.sim.poison`) and send the resulting
delta honestly; `backdoor+boost` also boosts it (the full model-replacement attack).

The step is empty in every normal run and recorded with the run's config, so an attacked run
can never pass for a clean one. NumPy only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedocr.federated.pipeline.checks import CheckConfig, is_float, is_statistic, l2_norm
from fedocr.federated.pipeline.robust import scaled
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Update, Weights

UPDATE_KINDS = ("sign-flip", "boost", "noise", "free-rider", "collude")
DATA_KINDS = ("label-shuffle", "backdoor")
UNDER_BOUND = 0.99   # a crafted update's norm as a share of the server's bound: just under it


def parse_attacks(spec: str) -> dict[str, tuple[str, ...]]:
    """'bank-2:sign-flip, school-3:backdoor+boost' -> {'bank-2': ('sign-flip',), 'school-3': ('backdoor', 'boost')}."""
    attacks: dict[str, tuple[str, ...]] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        client, sep, rest = item.partition(":")
        kinds = tuple(k.strip() for k in rest.split("+"))
        unknown = [k for k in kinds if k not in UPDATE_KINDS + DATA_KINDS]
        if not (sep and client) or unknown:
            raise ValueError(f"bad attack {item!r}: expected NODE:KIND[+KIND] with KIND in "
                             f"{', '.join(UPDATE_KINDS + DATA_KINDS)}")
        if sum(k in UPDATE_KINDS for k in kinds) > 1 or sum(k in DATA_KINDS for k in kinds) > 1:
            raise ValueError(f"bad attack {item!r}: at most one update attack and one data attack per node")
        if client in attacks:
            raise ValueError(f"bad attack {item!r}: {client} is named twice")
        attacks[client] = kinds
    return attacks


@dataclass(frozen=True)
class AttackConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"attack.nodes": "nodes", "attack.scale": "scale",
                                      "attack.from-round": "from_round", "attack.poison-rate": "poison_rate",
                                      "max-update-norm": "max_update_norm"}

    nodes: str = ""              # `attack.nodes`: "node:kind[+kind],..." (simulation only)
    scale: float = 10.0          # `attack.scale`: gamma, the boost of `boost` and the noise norm of `noise`
    from_round: int = 1          # `attack.from-round`: attackers behave honestly before this round
    poison_rate: float = 0.5     # `attack.poison-rate`: share of a backdoor node's lines with a digit that it stamps
    max_update_norm: float = CheckConfig.max_update_norm   # `max-update-norm`: the bound attackers stay under

    def __post_init__(self) -> None:
        try:
            parse_attacks(self.nodes)
        except ValueError as exc:
            raise bad("attack.nodes", str(exc)) from None
        if not self.scale > 0:
            raise bad("attack.scale", "must be positive")
        if self.from_round < 1:
            raise bad("attack.from-round", "must be at least 1")
        if not 0 < self.poison_rate <= 1:
            raise bad("attack.poison-rate", "must be in (0, 1]")

    def check_nodes(self, names: Sequence[str]) -> None:
        """Refuse attackers the federation does not have: a misspelt one would make a clean run."""
        unknown = sorted(set(parse_attacks(self.nodes)) - set(names))
        if unknown:
            raise bad("attack.nodes", f"no node {', '.join(unknown)} in this federation ({', '.join(names)})")

    def kinds(self, client: str, server_round: int) -> tuple[str, ...]:
        """What `client` does in this round (nothing before `from-round`)."""
        return parse_attacks(self.nodes).get(client, ()) if server_round >= self.from_round else ()


def _with_norm(tensors: Mapping[str, np.ndarray], norm: float) -> Weights:
    """The same direction at L2 norm `norm` (zeros stay zeros)."""
    current = l2_norm(tensors)
    return scaled(tensors, norm / current) if current > 0 else dict(tensors)


def craft(kind: str, delta: Mapping[str, np.ndarray], ctx: StepContext, gamma: float) -> Weights:
    """The malicious update of one update attack (before the norm bound is honoured)."""
    if kind == "sign-flip":
        return scaled(delta, -1.0)
    if kind == "boost":
        return scaled(delta, gamma)
    if kind == "noise":
        noise = {k: ctx.rng.standard_normal(v.shape).astype(v.dtype) if is_float(v) else v for k, v in delta.items()}
        return _with_norm(noise, gamma * l2_norm(delta))
    if kind == "free-rider":
        stale = ctx.state.get("stale")
        return dict(stale) if stale else {k: np.zeros_like(v) for k, v in delta.items()}
    if kind == "collude":  # from the global model only, so every colluder sends the very same vector
        # parameters only: a pushed BatchNorm variance would turn negative, a crash rather than an attack
        return {k: np.asarray(-ctx.reference[k], dtype=v.dtype) if is_float(v) and not is_statistic(k)
                else np.zeros_like(v) for k, v in delta.items()}
    raise ValueError(f"unknown update attack {kind!r}")


@dataclass(frozen=True)
class Attack:
    """Client step (simulation only): an attacking node replaces its delta by a crafted one."""
    config: AttackConfig
    name: str = "attack"

    def describe(self) -> str:
        return (f"attacks {self.config.nodes!r} from round {self.config.from_round}, gamma {self.config.scale:g}, "
                f"backdoor on {self.config.poison_rate:g} of the lines with a digit, "
                f"under norm {UNDER_BOUND:g} x {self.config.max_update_norm:g} (simulation only)")

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        kinds = [k for k in self.config.kinds(update.client, ctx.round) if k in UPDATE_KINDS]
        if not kinds:
            planned = parse_attacks(self.config.nodes).get(update.client, ())
            if "free-rider" in planned and "stale" not in ctx.state:
                ctx.state["stale"] = dict(update.tensors)  # an honest round before it turns: what it will replay
            return update
        crafted = craft(kinds[0], update.tensors, ctx, self.config.scale)
        limit = UNDER_BOUND * self.config.max_update_norm
        if kinds[0] == "collude" or l2_norm(crafted) > limit:  # colluders push as hard as the server takes
            crafted = _with_norm(crafted, limit)
        return update.with_tensors(crafted).noted(self.name, attack=kinds[0], norm=l2_norm(crafted),
                                                  honest_norm=l2_norm(update.tensors))


def client_steps(config: AttackConfig) -> list[Attack]:
    return [Attack(config)] if config.nodes else []
