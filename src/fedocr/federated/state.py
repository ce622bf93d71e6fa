"""The server's resumable state, checkpointed atomically at the end of every round.

It holds what a restarted ServerApp needs to continue exactly after the last completed round:
the global weights, the round number, the best round so far, the strategy's state (FedAvg has
none; FedAvgM keeps its server velocity), the node-id -> client-name map and the run id under
which the run store files its rounds. Written with the model part's atomic write,
so a kill mid-write leaves the previous round's state intact.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedocr.federated.updates import Weights
from fedocr.federated.weights import c_order
from fedocr.model.checkpoint import atomic_write

STATE_FILE = "server-state.pt"


@dataclass
class ServerState:
    run_id: str
    round: int                                  # last completed round (0: none yet)
    weights: Weights
    charset_version: str
    best_round: int | None = None
    best_cer: float | None = None
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    names: dict[str, str] = field(default_factory=dict)   # node id -> client name
    velocity: Weights | None = None             # FedAvgM's server momentum buffer (None: plain FedAvg)

    @classmethod
    def fresh(cls, weights: Weights, charset_version: str) -> "ServerState":
        return cls(run_id=uuid.uuid4().hex[:12], round=0, weights=weights, charset_version=charset_version)

    def save(self, out_dir: Path) -> None:
        payload = {"run_id": self.run_id, "round": self.round, "charset_version": self.charset_version,
                   "best_round": self.best_round, "best_cer": self.best_cer, "strategy": self.strategy,
                   "names": self.names, "weights": _tensors(self.weights),
                   "velocity": None if self.velocity is None else _tensors(self.velocity)}
        atomic_write(out_dir / STATE_FILE, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, out_dir: Path) -> "ServerState | None":
        path = out_dir / STATE_FILE
        if not path.is_file():
            return None
        payload = torch.load(path, map_location="cpu", weights_only=True)
        weights = {k: v.numpy() for k, v in payload.pop("weights").items()}
        velocity = payload.pop("velocity", None)  # absent in states written before FedAvgM
        return cls(weights=weights, velocity=None if velocity is None else {k: v.numpy() for k, v in velocity.items()},
                   **payload)


def _tensors(weights: Weights) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(c_order(v)) for k, v in weights.items()}
