"""The CRNN's configuration and the input geometry every backend shares (PyTorch, ONNX Runtime,
preprocessing), apart from the network so that reading with ONNX Runtime, and checking a
command's flags, never import torch."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

INPUT_HEIGHT = 32
WIDTH_STRIDE = 4  # input columns per output timestep

NormKind = Literal["batch", "group"]

# (conv channels of the five blocks, LSTM hidden size per direction)
SIZES: dict[str, tuple[tuple[int, int, int, int, int], int]] = {
    "tiny": ((16, 32, 64, 64, 96), 64),          # tests and quick demos only
    "small": ((32, 64, 128, 128, 256), 128),     # fast CPU default
    "base": ((64, 128, 256, 256, 384), 192),     # the shipped base model
}


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int                 # charset size, blank included
    size: str = "small"              # key of SIZES
    norm: NormKind = "batch"         # "group" for DP-SGD (Opacus cannot use BatchNorm)
    lstm_layers: int = 2
    dropout: float = 0.1             # before the linear head

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"unknown model size {self.size!r}; choose one of {', '.join(SIZES)}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"unknown norm {self.norm!r}; choose batch or group")
        if self.num_classes < 2:
            raise ValueError("num_classes must count the blank and at least one character")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
