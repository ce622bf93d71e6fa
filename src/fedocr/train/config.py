"""Training settings, validated once where they are read."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 10.0                 # passes over the data; ignored when max_steps is set
    max_steps: int | None = None         # total optimizer steps (the schedule's length)
    batch_size: int = 32
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: with momentum (FedAvg's client optimizer)
    momentum: float = 0.9                # SGD momentum
    lr: float = 1e-3                     # peak learning rate
    weight_decay: float = 1e-4
    grad_clip: float = 5.0               # max global gradient norm
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.05           # cosine ends at lr * min_lr_ratio
    bucket: bool = True                  # batch lines of similar length together
    seed: int = 0
    num_workers: int = 0                 # DataLoader worker processes (0: load in the training process)
    log_every: int = 50                  # steps between log lines / history points
    eval_every: int = 0                  # steps between validations (0: only at the end)
    checkpoint_every_s: float = 300.0    # seconds between resumable checkpoints (when an output is given)
    bf16: bool = False                   # bf16 autocast (faster with AMX or a GPU; check convergence)
    device: str = "cpu"                  # cpu | cuda | cuda:N (a GPU only speeds training up)
    time_budget_s: float | None = None   # fit the schedule's length to this many seconds of training
    dp_noise_multiplier: float = 0.0     # > 0: DP-SGD (train.private): Poisson batches, per-line clip, noise
    dp_max_grad_norm: float = 1.0        # DP-SGD's per-line gradient L2 bound
    dp_trainable: tuple[str, ...] = ()   # DP-SGD trains only parameters named with these prefixes (empty: all)
    prox_mu: float = 0.0                 # > 0: add mu/2 * ||w - anchor||^2 to the loss (Ditto's personal model, FedProx)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError("give epochs > 0 or max_steps")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.log_every < 1 or self.warmup_steps < 0 or self.num_workers < 0 or self.eval_every < 0:
            raise ValueError("log_every must be >= 1; warmup_steps, num_workers and eval_every >= 0")
        if self.grad_clip <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.seed < 0:
            raise ValueError("grad_clip must be > 0, min_lr_ratio in [0, 1] and seed >= 0")
        if self.prox_mu < 0:
            raise ValueError("prox_mu must be 0 or more")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adamw or sgd")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"unknown device {self.device!r}; choose cpu, cuda or cuda:N")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError("time_budget_s must be positive")
        if self.dp_noise_multiplier < 0 or self.dp_max_grad_norm <= 0:
            raise ValueError("dp_noise_multiplier must be >= 0 and dp_max_grad_norm > 0")

    def total_steps(self, batches_per_epoch: int) -> int:
        return self.max_steps if self.max_steps is not None else max(1, round(self.epochs * batches_per_epoch))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
