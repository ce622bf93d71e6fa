"""The server's resumable state, checkpointed atomically at start (round 0, so a server stopped
before its first commit restarts under the same run id) and at the end of every round.

It holds what a restarted ServerApp needs to continue exactly after the last completed round:
the committed global weights and their validation scores, the round number, the best round so
far, each server step's own state (FedAvgM's velocity, later accountants), the node-id ->
client-name map, a clustered run's k models, and the run id under which the run store files its
rounds. Written with the model part's atomic write, so a kill mid-write leaves the previous
round's state intact.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedocr.federated.pipeline.build import States
from fedocr.federated.pipeline.types import Weights
from fedocr.federated.weights import c_order
from fedocr.model.checkpoint import atomic_write

STATE_FILE = "server-state.pt"


@dataclass
class ServerState:
    run_id: str
    round: int                                  # last completed round (0: none yet)
    weights: Weights                            # the committed global model
    charset_version: str
    best_round: int | None = None
    best_cer: float | None = None
    committed_cer: float | None = None          # validation of `weights` (the rollback gate compares with it)
    committed_loss: float | None = None
    steps: States = field(default_factory=dict)  # server steps' state, by step name
    names: dict[str, str] = field(default_factory=dict)   # node id -> client name
    # Clustered runs after the split: cluster index -> its committed model and validation scores
    # ({"weights", "cer", "loss"}); empty while the run trains one model.
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    val_source: str = ""                        # what the run validates on ("": a state from before it was kept)

    @classmethod
    def fresh(cls, weights: Weights, charset_version: str, run_id: str | None = None) -> "ServerState":
        return cls(run_id=run_id or uuid.uuid4().hex[:12], round=0, weights=weights, charset_version=charset_version)

    def save(self, out_dir: Path) -> None:
        payload = {"run_id": self.run_id, "round": self.round, "charset_version": self.charset_version,
                   "best_round": self.best_round, "best_cer": self.best_cer, "committed_cer": self.committed_cer,
                   "committed_loss": self.committed_loss, "names": self.names, "weights": _to_torch(self.weights),
                   "steps": _to_torch(self.steps), "clusters": _to_torch(self.clusters), "val_source": self.val_source}
        atomic_write(out_dir / STATE_FILE, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, out_dir: Path) -> "ServerState | None":
        path = out_dir / STATE_FILE
        if not path.is_file():
            return None
        payload = torch.load(path, map_location="cpu", weights_only=True)
        payload.pop("strategy", None)             # states written before the pipeline named their strategy
        velocity = payload.pop("velocity", None)  # ... and kept FedAvgM's velocity outside the steps
        steps = _to_numpy(payload.pop("steps", {}))
        clusters = _to_numpy(payload.pop("clusters", {}))
        if velocity is not None:
            steps.setdefault("fedavgm", {})["velocity"] = _to_numpy(velocity)
        return cls(weights=_to_numpy(payload.pop("weights")), steps=steps, clusters=clusters, **payload)


def _to_torch(value: Any) -> Any:
    """Arrays as tensors (torch.load with weights_only reads tensors, dicts, lists and scalars)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(c_order(value))
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    return value


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value
