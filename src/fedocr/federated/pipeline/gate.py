"""Validate, then commit or roll back: the server commits a candidate model only when its
validation CER is not worse than the committed model's by more than a tolerance; otherwise the
round is rolled back (recorded with its reason) and the next round starts from the committed
model. Off by default: every applied round is committed, as plain FedAvg does."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Verdict


@dataclass(frozen=True)
class RollbackConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"rollback.enabled": "enabled", "rollback.tolerance": "tolerance"}

    enabled: bool = False       # `rollback.enabled`: refuse candidates that validate worse
    tolerance: float = 0.005    # `rollback.tolerance`: allowed rise in validation CER (absolute)

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance <= 1:
            raise bad("rollback.tolerance", "must be in [0, 1] (an absolute CER)")


@dataclass(frozen=True)
class CommitGate:
    config: RollbackConfig
    name: str = "commit"

    def describe(self) -> str:
        if not self.config.enabled:
            return "always commit the candidate"
        return f"commit unless validation CER rises by more than {self.config.tolerance:g}; else roll back"

    def __call__(self, candidate_cer: float | None, committed_cer: float | None, ctx: StepContext) -> Verdict:
        if not self.config.enabled or candidate_cer is None or committed_cer is None:
            verdict = Verdict(True)
        elif candidate_cer > committed_cer + self.config.tolerance:
            verdict = Verdict(False, f"rolled back: validation CER {candidate_cer:.4f} > committed "
                                     f"{committed_cer:.4f} + tolerance {self.config.tolerance:g}")
        else:
            verdict = Verdict(True)
        ctx.note(self.name, commit=verdict.commit, candidate_cer=candidate_cer, committed_cer=committed_cer,
                 reason=verdict.reason)
        return verdict
