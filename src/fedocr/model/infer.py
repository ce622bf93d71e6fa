"""Batched inference shared by every backend: pad lines, run a logits function, decode.

A backend is any function `(images (N,1,32,W) float32, widths (N,) int64) -> logits (N,T,C)`:
PyTorch here, ONNX Runtime in `fedocr.serve`. Lines are sorted by width before batching so a
batch wastes little compute on padding; results come back in input order.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedocr.charset import Charset
from fedocr.model.decode import Decoded, beam_search, greedy_decode, log_softmax
from fedocr.model.config import WIDTH_STRIDE

if TYPE_CHECKING:  # torch only for the PyTorch backend: ONNX Runtime reads without it
    from fedocr.model.crnn import CRNN

LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pad_lines(lines: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed lines (32, W_i) -> (N, 1, 32, max W) float32 and widths (N,) int64."""
    widths = np.array([line.shape[1] for line in lines], dtype=np.int64)
    batch = np.zeros((len(lines), 1, lines[0].shape[0], int(widths.max())), dtype=np.float32)
    for i, line in enumerate(lines):
        batch[i, 0, :, : line.shape[1]] = line
    return batch, widths


def torch_logits_fn(model: CRNN) -> LogitsFn:
    import torch

    model.eval()
    device = next(model.parameters()).device

    def run(images: np.ndarray, widths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(images).to(device), torch.from_numpy(widths).to(device))
            return logits.float().cpu().numpy()

    return run


def decode_logits(logits: np.ndarray, widths: np.ndarray, charset: Charset, beam_width: int = 0) -> list[Decoded]:
    log_probs = log_softmax(logits.astype(np.float32))
    lengths = np.maximum(widths // WIDTH_STRIDE, 1)
    if beam_width > 1:
        return [beam_search(lp, int(n), charset, beam_width) for lp, n in zip(log_probs, lengths)]
    return [greedy_decode(lp, int(n), charset) for lp, n in zip(log_probs, lengths)]


def recognize_lines(lines: Sequence[np.ndarray], logits_fn: LogitsFn, charset: Charset, batch_size: int = 32,
                    beam_width: int = 0) -> list[Decoded]:
    """Decode preprocessed lines in width-sorted batches; results in input order."""
    order = sorted(range(len(lines)), key=lambda i: lines[i].shape[1])
    results: list[Decoded | None] = [None] * len(lines)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        images, widths = pad_lines([lines[i] for i in chunk])
        for i, decoded in zip(chunk, decode_logits(logits_fn(images, widths), widths, charset, beam_width)):
            results[i] = decoded
    return [r for r in results if r is not None]
