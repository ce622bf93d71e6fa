"""Batched inference shared by every backend: pad lines, run a logits function, decode.

A backend is any function `(images (N,1,32,W) float32, widths (N,) int64) -> logits (N,T,C)`:
PyTorch here, ONNX Runtime in `fedocr.serve`. Lines are sorted by width before batching so a
batch wastes little compute on padding; results come back in input order. A line set much denser
or wider than the model learned to read can be read a second time at the density it reads best
(`reread_off_density`).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fedocr.charset import Charset
from fedocr.model.decode import Decoded, beam_search, greedy_decode, log_softmax
from fedocr.model.config import WIDTH_STRIDE

if TYPE_CHECKING:  # torch only for the PyTorch backend: ONNX Runtime reads without it
    from fedocr.model.crnn import CRNN

LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
ReadFn = Callable[[list[np.ndarray]], list[Decoded]]

# Character density. The models learned to read about 12 px per half-width character at 32 px
# high (bench/line_density.py: medians 10.1-12.0 over the training presets) and read much denser or
# wider setting poorly: at a stride of 4 a narrow run of letters gets too few CTC steps (`ll` ->
# `l`), and a hanzi drawn half as wide again is read as its two halves. A line whose first
# reading says it is set more than DENSITY_BAND off the target is read once more, resized
# horizontally towards it (by a factor within RESCALE_LIMITS), and the more confident reading kept.
DENSITY_TARGET = 12.0
DENSITY_BAND = 0.15
RESCALE_LIMITS = (0.6, 1.3)


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
                    beam_width: int = 0, reread: bool = False) -> list[Decoded]:
    """Decode preprocessed lines in width-sorted batches; results in input order. `reread`: read
    lines set off the model's density again (`reread_off_density`), as the service does."""
    def read(some: Sequence[np.ndarray]) -> list[Decoded]:
        return _read_sorted(some, logits_fn, charset, batch_size, beam_width)

    first = read(lines)
    return reread_off_density(lines, first, read) if reread else first


def _read_sorted(lines: Sequence[np.ndarray], logits_fn: LogitsFn, charset: Charset, batch_size: int,
                 beam_width: int) -> list[Decoded]:
    order = sorted(range(len(lines)), key=lambda i: lines[i].shape[1])
    results: list[Decoded | None] = [None] * len(lines)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        images, widths = pad_lines([lines[i] for i in chunk])
        for i, decoded in zip(chunk, decode_logits(logits_fn(images, widths), widths, charset, beam_width)):
            results[i] = decoded
    return [r for r in results if r is not None]


def half_widths(text: str) -> int:
    """The text's width in half-width characters: a hanzi or full-width form counts two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def density_rescale(width: int, text: str) -> float:
    """The horizontal factor that brings a line `width` columns wide, read as `text`, to
    DENSITY_TARGET; 1.0 when it is within DENSITY_BAND of it or nothing was read."""
    if not text.strip() or width <= 0:
        return 1.0
    factor = min(max(DENSITY_TARGET * half_widths(text) / width, RESCALE_LIMITS[0]), RESCALE_LIMITS[1])
    return factor if abs(factor - 1.0) > DENSITY_BAND else 1.0


def rescale_line(line: np.ndarray, factor: float) -> np.ndarray:
    """A preprocessed line (32, W) resized to about `factor` x W columns, a multiple of WIDTH_STRIDE."""
    width = max(WIDTH_STRIDE, int(round(line.shape[1] * factor / WIDTH_STRIDE)) * WIDTH_STRIDE)
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return np.clip(cv2.resize(line, (width, line.shape[0]), interpolation=interpolation), 0.0, 1.0)


def reread_off_density(lines: Sequence[np.ndarray], decoded: Sequence[Decoded], read: ReadFn) -> list[Decoded]:
    """Read again, with `read`, each line whose first reading puts it off the model's density,
    rescaled towards it, and keep whichever reading is more confident, unless the second read
    nothing (an empty reading's confidence is the blank's, high on anything). A kept second
    reading's character spans are mapped back to the timesteps of the line as given."""
    rescaled: dict[int, np.ndarray] = {}
    for i, (line, first) in enumerate(zip(lines, decoded)):
        factor = density_rescale(line.shape[1], first.text)
        if factor != 1.0:
            again = rescale_line(line, factor)
            if again.shape[1] != line.shape[1]:   # a line a few columns wide may not change at all
                rescaled[i] = again
    kept = list(decoded)
    for i, second in zip(rescaled, read(list(rescaled.values())) if rescaled else []):
        if second.text.strip() and second.confidence > decoded[i].confidence:
            kept[i] = replace(second, char_spans=spans_on(second.char_spans, rescaled[i].shape[1], lines[i].shape[1]))
    return kept


def spans_on(spans: Sequence[tuple[int, int]], read_width: int, width: int) -> tuple[tuple[int, int], ...]:
    """CTC timestep spans read on a line `read_width` columns wide, as timesteps of the same line
    `width` columns wide: each span covers the columns it covered, within the line's last step."""
    ratio, last = read_width / width, max(width // WIDTH_STRIDE, 1) - 1
    return tuple((min(int(np.floor(first / ratio)), last), min(max(int(np.ceil((end + 1) / ratio)) - 1, 0), last))
                 for first, end in spans)
