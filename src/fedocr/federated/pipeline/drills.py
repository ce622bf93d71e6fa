"""Fault drills, a simulation-only client step: a named client crashes, hangs, or sends a bad
update in a given round.

Real federations lose nodes mid-round and receive broken updates; the server must survive both.
`faults = "bank:crash@1,school:nan@2"` drills those paths through the real engine instead of a
mock. It is empty in every normal run (the builder then adds no step) and is recorded with the
run's config, so a drilled run can never pass for a clean one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from fedocr.federated.pipeline.checks import is_float
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Update

KINDS = ("crash", "hang", "nan", "huge", "charset")
WRONG_CHARSET = "0" * 16


@dataclass(frozen=True)
class Fault:
    client: str    # organisation / node name
    kind: str      # one of KINDS
    round: int


def parse_faults(spec: str) -> list[Fault]:
    """'bank:crash@1, school:hang@2' -> [Fault('bank', 'crash', 1), Fault('school', 'hang', 2)]."""
    faults = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        client, sep, rest = item.partition(":")
        kind, sep2, rnd = rest.partition("@")
        if not (sep and sep2 and client and rnd.isdigit()) or kind not in KINDS:
            raise ValueError(f"bad fault {item!r}: expected CLIENT:KIND@ROUND with KIND in {', '.join(KINDS)}")
        faults.append(Fault(client, kind, int(rnd)))
    return faults


def fault_for(spec: str, client: str, server_round: int) -> str | None:
    """The drill this client must act out in this round, if any."""
    for fault in parse_faults(spec):
        if fault.client == client and fault.round == server_round:
            return fault.kind
    return None


@dataclass(frozen=True)
class DrillConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"faults": "faults", "round-deadline-s": "round_deadline_s"}

    faults: str = ""                  # `faults`: "client:kind@round,..."
    round_deadline_s: float = 300.0   # `round-deadline-s`: a hang lasts well past it

    def __post_init__(self) -> None:
        try:
            parse_faults(self.faults)
        except ValueError as exc:
            raise bad("faults", str(exc)) from None


@dataclass(frozen=True)
class Drill:
    """Client step (drills only): act out this client's fault of this round, if it has one."""
    config: DrillConfig
    name: str = "drill"

    def describe(self) -> str:
        return f"fault drills {self.config.faults!r} (simulation only)"

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        kind = fault_for(self.config.faults, update.client, ctx.round)
        if kind is None:
            return update
        if kind == "crash":
            raise RuntimeError(f"drill: {update.client} crashes in round {ctx.round}")
        if kind == "hang":
            time.sleep(1.5 * self.config.round_deadline_s + 5)  # well past the deadline; the server must not wait
            return update
        if kind == "charset":
            return replace(update, meta={**update.meta, "charset-version": WRONG_CHARSET})
        tensors = dict(update.tensors)
        if kind == "nan":
            first = next(k for k, v in tensors.items() if is_float(v))
            tensors[first] = np.full_like(tensors[first], np.nan)
        else:  # huge
            tensors = {k: (v * 1e6).astype(v.dtype) if is_float(v) else v for k, v in tensors.items()}
        return update.with_tensors(tensors).noted(self.name, fault=kind)


def client_steps(config: DrillConfig) -> list[Drill]:
    return [Drill(config)] if config.faults else []
