"""Moving weights between a CRNN and NumPy `Weights` (named tensors, the pipeline's currency)."""
from __future__ import annotations

import numpy as np
import torch

from fedocr.federated.pipeline.types import Weights
from fedocr.model import CRNN


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


def c_order(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray would turn a 0-d buffer
    such as BatchNorm's num_batches_tracked into shape (1,))."""
    return array if array.flags.c_contiguous else array.copy(order="C")
