"""DP-SGD for the one training loop (Abadi et al., CCS 2016, arXiv:1607.00133), with Opacus.

Each step draws a Poisson sample of the lines (each line with probability q = batch / lines),
clips every line's gradient to L2 norm `max_grad_norm`, adds N(0, (noise x max_grad_norm)^2)
to their sum and divides by the expected batch size (Opacus's `DPOptimizer` over a
`GradSampleModule`). The (q, noise, steps) of a run are what the accountant needs; the
federated client's ledger (`federated.pipeline.privacy`) adds them up.

The CRNN is made DP-trainable in place without losing what it knows:
- BatchNorm uses the batch's statistics, so one line's gradient depends on the others and
  cannot be clipped alone. Its layers become `FrozenBatchNorm2d`: the same per-channel
  affine map with the running statistics the model was trained with, under the same state-dict
  names, not trained (their delta stays zero). Swapping in GroupNorm (`ModuleValidator.fix`)
  would throw the base model's accuracy away; a model built with `norm="group"` trains fully.
- `nn.LSTM` becomes `opacus.layers.DPLSTM`, which computes per-sample gradients and keeps the
  LSTM's parameter names, so the weights load both ways unchanged.

An empty Poisson draw (probability (1 - q)^lines ~ e^-batch) is drawn again; batches of fewer
than 8 lines are refused so that this conditioning stays negligible (< e^-8).

The noise and the Poisson draws come from the OS's entropy (`secret_generator`), never from the
training seed: a seed is recorded with the run and known to the server, and a noise stream that
anyone can regenerate can be subtracted again (with plain SGD, exactly), while subsampling only
amplifies privacy when nobody knows which lines were drawn. DP-SGD runs are therefore not
bit-reproducible. (torch's generator is a Mersenne Twister seeded with 63 secret bits, not a
CSPRNG: Opacus's `secure_mode` needs torchcsprng, which has no wheel for this torch.)
"""
from __future__ import annotations

import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.layers import DPLSTM
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import Sampler

MIN_DP_BATCH = 8


@dataclass(frozen=True)
class DpSgd:
    noise_multiplier: float   # noise std / max_grad_norm
    max_grad_norm: float      # L2 bound of one line's gradient

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError("DP-SGD needs a noise multiplier > 0")
        if not self.max_grad_norm > 0:
            raise ValueError("DP-SGD needs a gradient clip > 0")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d in inference form: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias,
    all five tensors kept as buffers under BatchNorm's names (nothing to train, nothing per batch)."""

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = norm.eps
        for name, tensor in norm.state_dict().items():
            self.register_buffer(name, tensor.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def _drop_inner_names(module: DPLSTM, state_dict: dict, prefix: str, _meta: object) -> None:
    """Keep only nn.LSTM's names in a parent's state dict (Opacus's own filter misses the prefix)."""
    for inner in module.old_to_new:
        state_dict.pop(prefix + inner, None)


def make_dp_trainable(model: nn.Module) -> nn.Module:
    """Swap BatchNorm for frozen affine maps and nn.LSTM for DPLSTM, in place (same state-dict keys)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, FrozenBatchNorm2d(child))
            elif isinstance(child, nn.LSTM) and not isinstance(child, DPLSTM):
                lstm = DPLSTM(child.input_size, child.hidden_size, num_layers=child.num_layers, bias=child.bias,
                              batch_first=child.batch_first, dropout=child.dropout,
                              bidirectional=child.bidirectional)
                lstm.load_state_dict(child.state_dict())
                lstm.train(child.training)
                lstm._state_dict_hooks.clear()   # Opacus's filter returns a copy a parent never sees
                lstm._register_state_dict_hook(_drop_inner_names)
                setattr(parent, name, lstm.to(next(child.parameters()).device))
    return model


def secret_generator() -> torch.Generator:
    """A generator seeded from the OS's entropy: its draws cannot be regenerated from the run."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def private(model: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
            dp: DpSgd) -> tuple[GradSampleModule, DPOptimizer]:
    """The module to run forward through (per-sample gradients) and the optimizer that clips and
    adds noise. `model` must already be DP-trainable; its parameters are shared, not copied."""
    if batch_size < MIN_DP_BATCH:
        raise ValueError(f"DP-SGD needs a batch of at least {MIN_DP_BATCH} lines (got {batch_size})")
    # The first convolution's input (the image) needs no gradient, which PyTorch warns about once
    # per backward hook; it means nothing to a user and changes no gradient.
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    net = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    dp_optimizer = DPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                               expected_batch_size=batch_size, loss_reduction="mean", generator=secret_generator())
    return net, dp_optimizer


class PoissonBatches(Sampler[list[int]]):
    """`draws` batches, each line in each with probability q (empty draws drawn again), drawn with
    a secret generator (see the module's doc)."""

    def __init__(self, n: int, q: float, draws: int) -> None:
        self.n, self.q, self.draws = n, q, draws
        self.generator = secret_generator()

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.draws):
            batch: list[int] = []
            while not batch:
                batch = torch.nonzero(torch.rand(self.n, generator=self.generator) < self.q).flatten().tolist()
            yield batch

    def __len__(self) -> int:
        return self.draws
