"""One HE round's server side after the replies are in: add the nodes' CKKS ciphertexts with the
public context, ask one node to decrypt the sum (the next one if it fails), and turn the decrypted
sum into the example-weighted mean of the deltas (pipeline.he has the trust model)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from fedocr.federated.pipeline import he
from fedocr.federated.pipeline.checks import is_float
from fedocr.federated.pipeline.types import Weights
from fedocr.federated.protocol import DECRYPT, Received, decrypt_content, read_decrypted, to_nodes, wire_bytes


@dataclass
class HeMean:
    mean: Weights | None
    why_not: str | None
    decrypted_by: str | None = None
    bytes_down: int = 0       # the sum sent to the decrypting node
    bytes_up: int = 0         # the plaintext sum it sent back


def screen_ciphertexts(received: list[Received], public: Any, expected: int) -> None:
    """Reject, by node, a reply whose ciphertexts are not `expected` readable CKKS vectors."""
    import tenseal as ts

    for r in received:
        if r.update is None or r.record.reason:
            continue
        cts = he.from_arrays(r.update.tensors)
        try:
            if len(cts) != expected:
                raise ValueError(f"{len(cts)} ciphertexts, expected {expected}")
            for c in cts:
                ts.ckks_vector_from(public, c)
        except Exception as exc:  # noqa: BLE001 - what a node sends must not end the round
            r.record.reason = f"unreadable ciphertexts ({str(exc)[:100] or type(exc).__name__})"
            r.update = None


def he_mean(grid: Grid, summed: list[Received], config: he.HeConfig, public: Any, weights: Weights,
            index: np.ndarray | None, deadline: float) -> HeMean:
    """The mean of the summed nodes' updates over the tensors of `weights` (zeros outside the index set)."""
    keys = he.float_keys(weights)
    size = sum(weights[k].size for k in keys)
    chosen = he.unpack(index, size) if index is not None else np.arange(size)
    total = sum(r.record.examples for r in summed)
    ciphertexts = he.add([he.from_arrays(r.update.tensors) for r in summed if r.update is not None], public)
    content = decrypt_content(ciphertexts, len(chosen))
    for r in summed:   # one node decrypts; a node that fails or answers nonsense hands over to the next
        [answer] = list(grid.send_and_receive(to_nodes(content, [int(r.record.node_id)], DECRYPT, deadline + 30),
                                              timeout=deadline)) or [None]
        values = read_decrypted(answer, len(chosen)) if answer is not None else None
        if values is None:
            continue
        flat = np.zeros(size)
        flat[chosen] = values / total
        mean: Weights = {}
        offset = 0
        for k in keys:
            mean[k] = flat[offset:offset + weights[k].size].reshape(weights[k].shape).astype(weights[k].dtype)
            offset += weights[k].size
        for k, ref in weights.items():   # integer buffers came in the clear, weighted by examples
            if not is_float(ref):
                mean[k] = np.rint(sum(np.asarray(s.update.tensors[k], dtype=np.float64) for s in summed
                                      if s.update is not None) / total).astype(ref.dtype)
        return HeMean(mean, None, r.record.client, wire_bytes(content), wire_bytes(answer.content))  # type: ignore[union-attr]
    return HeMean(None, "no node decrypted the sum")


def expected_ciphertexts(config: he.HeConfig, weights: Weights) -> int:
    size = sum(weights[k].size for k in he.float_keys(weights))
    values = math.ceil(config.top_k * size) if config.top_k else size
    return math.ceil(values / config.slots)
