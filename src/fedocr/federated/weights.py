"""Moving weights between a CRNN, NumPy `Weights`, Flower records and the model's config."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedocr.model import CRNN, ModelConfig
from fedocr.federated.updates import Weights


def model_weights(model: CRNN) -> Weights:
    """The model's state dict (parameters and buffers) as NumPy copies."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_weights(model: CRNN, weights: Weights) -> CRNN:
    """Load all or some tensors (strict on names that are given)."""
    state = {k: torch.from_numpy(c_order(v)) for k, v in weights.items()}
    missing = set(state) - set(model.state_dict())
    if missing:
        raise KeyError(f"unknown tensors {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    return model


def to_record(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: Array(c_order(v)) for k, v in weights.items()})


def from_record(record: ArrayRecord) -> Weights:
    return {k: arr.numpy() for k, arr in record.items()}


def model_config_record(config: ModelConfig) -> ConfigRecord:
    return ConfigRecord({f"model-{k}": v for k, v in config.to_dict().items()})


def model_config_from(record: ConfigRecord) -> ModelConfig:
    values: dict[str, Any] = {k[len("model-"):]: v for k, v in record.items() if k.startswith("model-")}
    return ModelConfig(**values)


def c_order(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray would turn a 0-d buffer
    such as BatchNorm's num_batches_tracked into shape (1,))."""
    return array if array.flags.c_contiguous else array.copy(order="C")
