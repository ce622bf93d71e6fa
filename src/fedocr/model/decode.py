"""CTC decoding on NumPy log-probabilities, shared by PyTorch and ONNX Runtime inference.

Confidence: a character's confidence is the highest probability the model gave that
character over the timesteps it spans (the peak of its CTC spike); a line's confidence is
the mean of its characters' confidences (as PaddleOCR reports it), or for an empty line the
mean probability of the blank. Beam search is CTC prefix beam search (Hannun et al., 2014,
arXiv:1408.2873) without a language model.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from fedocr.charset import BLANK, Charset


@dataclass(frozen=True)
class Decoded:
    text: str
    confidence: float                 # line confidence in [0, 1]
    char_confidences: tuple[float, ...]
    # Per character, the first and last timestep of its CTC spike (timestep t covers input
    # columns [t * WIDTH_STRIDE, (t + 1) * WIDTH_STRIDE) of the preprocessed line).
    char_spans: tuple[tuple[int, int], ...] = ()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _line_confidence(char_probs: list[float], log_probs: np.ndarray) -> float:
    if char_probs:
        return float(np.mean(char_probs))
    return float(np.exp(log_probs[:, BLANK]).mean()) if len(log_probs) else 0.0


def greedy_decode(log_probs: np.ndarray, length: int, charset: Charset) -> Decoded:
    """Best path: argmax per timestep, merge repeats, drop blanks. log_probs is (T, C)."""
    lp = log_probs[:length]
    best = lp.argmax(axis=-1)
    peak = np.exp(lp.max(axis=-1))
    ids: list[int] = []
    probs: list[float] = []
    spans: list[tuple[int, int]] = []
    prev = BLANK
    for t, k in enumerate(best):
        k = int(k)
        if k != BLANK:
            if k != prev:
                ids.append(k)
                probs.append(float(peak[t]))
                spans.append((t, t))
            else:
                probs[-1] = max(probs[-1], float(peak[t]))
                spans[-1] = (spans[-1][0], t)
        prev = k
    return Decoded(charset.decode(ids), _line_confidence(probs, lp), tuple(probs), tuple(spans))


def beam_search(log_probs: np.ndarray, length: int, charset: Charset, beam_width: int = 8,
                prune_top: int = 12) -> Decoded:
    """CTC prefix beam search over (T, C) log-probs; considers the `prune_top` classes per step."""
    lp = log_probs[:length].astype(np.float64)
    # Each prefix keeps (log P ending in blank, log P ending in non-blank).
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -np.inf)}
    peaks: dict[tuple[int, ...], tuple[float, ...]] = {(): ()}
    spans: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {(): ()}
    for t in range(len(lp)):
        row = lp[t]
        candidates = np.argpartition(row, -prune_top)[-prune_top:] if len(row) > prune_top else range(len(row))
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [-np.inf, -np.inf])
        nxt_peaks: dict[tuple[int, ...], tuple[float, ...]] = {}
        # Where each prefix's characters fired, along its most probable contribution so far.
        nxt_spans: dict[tuple[int, ...], tuple[float, tuple[tuple[int, int], ...]]] = {}

        def offer(prefix: tuple[int, ...], score: float, where: tuple[tuple[int, int], ...]) -> None:
            if prefix not in nxt_spans or score > nxt_spans[prefix][0]:
                nxt_spans[prefix] = (score, where)

        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            for k in candidates:
                k = int(k)
                p = row[k]
                if k == BLANK:
                    entry = nxt[prefix]
                    entry[0] = np.logaddexp(entry[0], total + p)
                    nxt_peaks.setdefault(prefix, peaks[prefix])
                    offer(prefix, total + p, spans[prefix])
                    continue
                extended = prefix + (k,)
                entry = nxt[extended]
                if prefix and prefix[-1] == k:
                    # a repeat only extends after a blank; otherwise it stays the same prefix
                    entry[1] = np.logaddexp(entry[1], pb + p)
                    same = nxt[prefix]
                    same[1] = np.logaddexp(same[1], pnb + p)
                    old = peaks[prefix]
                    nxt_peaks[prefix] = old[:-1] + (max(old[-1], float(np.exp(p))),)
                    offer(prefix, pnb + p, spans[prefix][:-1] + ((spans[prefix][-1][0], t),))
                    offer(extended, pb + p, spans[prefix] + ((t, t),))
                else:
                    entry[1] = np.logaddexp(entry[1], total + p)
                    offer(extended, total + p, spans[prefix] + ((t, t),))
                prior = nxt_peaks.get(extended)
                char_peak = float(np.exp(p))
                nxt_peaks[extended] = (prior[:-1] + (max(prior[-1], char_peak),)) if prior else peaks[prefix] + (char_peak,)
        ranked = sorted(nxt.items(), key=lambda item: -np.logaddexp(*item[1]))[:beam_width]
        beams = {prefix: (v[0], v[1]) for prefix, v in ranked}
        peaks = {prefix: nxt_peaks.get(prefix, peaks.get(prefix, ())) for prefix in beams}
        spans = {prefix: nxt_spans[prefix][1] if prefix in nxt_spans else spans.get(prefix, ()) for prefix in beams}
    best = max(beams, key=lambda prefix: np.logaddexp(*beams[prefix]))
    probs = list(peaks[best])
    return Decoded(charset.decode(list(best)), _line_confidence(probs, lp), tuple(probs), spans[best])
