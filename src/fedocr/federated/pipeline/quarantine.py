"""Quarantine: a node the robust rule keeps flagging stops being sampled until the operator says so.

The robust aggregator writes a `score` record per node per round with a verdict; a node is
flagged when the rule left it out, had to clip it, or found it pulling against the step
(pipeline.robust). One flag is weak evidence (an honest node with unusual data can be left out
once); `quarantine.after` flags within the last `quarantine.window` rounds quarantine it: the
server stops sampling it, records why, and takes it back only when the operator re-admits it
(`fedocr fl readmit`), which clears its flag history. The step's state (flag history and who is
held) is checkpointed with the server and kept whether or not the round committed: a node whose
update made the round roll back is still a suspect.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from fedocr.federated.pipeline.robust import SCORE
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepRecord, StepState

STEP = "quarantine"


@dataclass(frozen=True)
class QuarantineConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"quarantine.after": "after", "quarantine.window": "window"}

    after: int = 0     # `quarantine.after`: flags within the window that quarantine a node (0: never)
    window: int = 5    # `quarantine.window`: the last m rounds the flags are counted over

    def __post_init__(self) -> None:
        if self.window < 1:
            raise bad("quarantine.window", "must be at least 1 round")
        if not 0 <= self.after <= self.window:
            raise bad("quarantine.after", f"must be in [0, quarantine.window={self.window}] (0: never quarantine)")


@dataclass(frozen=True)
class Quarantine:
    """Server step after each round: count each node's flags, hold those past the limit."""
    config: QuarantineConfig
    name: str = STEP

    def describe(self) -> str:
        return (f"a node flagged in {self.config.after} of the last {self.config.window} rounds is no longer sampled "
                f"until the operator re-admits it (`fedocr fl readmit`)")

    @staticmethod
    def held(state: StepState) -> dict[str, str]:
        """The quarantined nodes and why."""
        return {node: info["reason"] for node, info in state.get("held", {}).items()}

    def review(self, records: Iterable[StepRecord], server_round: int, state: StepState) -> list[StepRecord]:
        """Add this round's flags (from the robust rule's score records); quarantine who passes the limit."""
        flags: dict[str, list[list[Any]]] = state.setdefault("flags", {})   # node -> [[round, verdict], ...]
        held: dict[str, dict[str, Any]] = state.setdefault("held", {})
        for r in records:
            if r.step == SCORE and r.info.get("flagged") and r.client not in held:
                flags.setdefault(r.client, []).append([server_round, str(r.info.get("verdict", "flagged"))])
        oldest = server_round - self.config.window + 1
        out = []
        for node in sorted(flags):
            recent = [f for f in flags[node] if f[0] >= oldest]
            flags[node] = recent
            if len(recent) >= self.config.after and node not in held:
                how = ", ".join(f"round {rnd}: {verdict}" for rnd, verdict in recent)
                reason = f"quarantined: flagged in {len(recent)} of the last {self.config.window} rounds ({how})"
                held[node] = {"round": server_round, "reason": reason}
                out.append(StepRecord(self.name, node, {"quarantined": reason}))
        return out

    def readmit(self, node: str, state: StepState) -> StepRecord | None:
        """The operator's word: the node is sampled again, with a clean flag history."""
        if node not in state.get("held", {}):
            return None
        del state["held"][node]
        state.get("flags", {}).pop(node, None)
        return StepRecord(self.name, node, {"readmitted": "re-admitted by the operator"})


def review_steps(config: QuarantineConfig) -> list[Quarantine]:
    return [Quarantine(config)] if config.after else []
