"""Update compression on the client and its decoding on the server.

Top-K sparsification (Aji & Heafield 2017; Stich et al., "Sparsified SGD with Memory", NeurIPS
2018) keeps the fraction k of each float tensor's entries (or of all of them, `scope =
"global"`) with the largest magnitude. With error feedback (Stich et al. 2018; Karimireddy et
al., "Error Feedback Fixes SignSGD", ICML 2019) what was left out is remembered in the step's
state on the node and added to the next round's delta, so nothing is lost, only delayed.
A warm-up (Lin et al., "Deep Gradient Compression", ICLR 2018) keeps more entries in the first
rounds, the kept fraction falling geometrically from dense to k: a model far from any optimum
(a federation from scratch, on CTC's all-blank plateau) moves in every direction at once, and
delaying most of them costs the rounds it takes to leave the plateau.
Quantisation sends float tensors as float16, or as int8 with one float32 scale per tensor.

The encoding travels in the tensor names. Top-K sends all float tensors as one flat vector (the
float tensors in name order, as the global model has them): `float-tensors@topk.v` holds the
kept values and one of `float-tensors@topk.mask` (a packed bitmap), `...@topk.gap16` (uint16
gaps between positions), `...@topk.gapvar` (the gaps as LEB128 varints: one byte for a gap under
128, so about a byte per entry at 1%, and no limit on a long gap) or `...@topk.abs32` (int32
positions) their positions, whichever is smallest; one pair for the whole update, since each
array costs a header on the wire. Integer buffers travel dense. `KEY@q8.scale` goes with an int8 `KEY`. The server's `Decode` step
inverts exactly the codecs the run config names, against the global model's shapes and dtypes;
anything it cannot read rejects the update instead of raising.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedocr.federated.pipeline.checks import is_float, is_statistic
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Update, Weights

SEP = "@"
FLAT = "float-tensors"   # the one flat vector Top-K sends
VALUES, MASK, GAP16, GAPVAR, ABS32 = "topk.v", "topk.mask", "topk.gap16", "topk.gapvar", "topk.abs32"
SCALE = "q8.scale"
POSITIONS = (MASK, GAP16, GAPVAR, ABS32)
VARINT_BYTES = 5  # enough for any int32 position
QUANTIZE = ("none", "fp16", "int8")


@dataclass(frozen=True)
class CompressConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"compress.top-k": "top_k", "compress.scope": "scope",
                                       "compress.error-feedback": "error_feedback", "compress.quantize": "quantize",
                                       "compress.warmup-rounds": "warmup_rounds"}

    top_k: float = 0.0              # `compress.top-k`: fraction of entries kept (0: dense)
    scope: str = "tensor"           # `compress.scope`: k of each tensor, or of all tensors ("global")
    error_feedback: bool = True     # `compress.error-feedback`: carry what Top-K left out to the next round
    quantize: str = "none"          # `compress.quantize`: none, fp16 or int8 (per-tensor scale)
    warmup_rounds: int = 0          # `compress.warmup-rounds`: rounds of denser Top-K before k is reached

    def __post_init__(self) -> None:
        if not 0 <= self.top_k < 1:
            raise bad("compress.top-k", "must be in [0, 1) (0: no sparsification)")
        if self.scope not in ("tensor", "global"):
            raise bad("compress.scope", f"{self.scope!r} is not 'tensor' or 'global'")
        if self.quantize not in QUANTIZE:
            raise bad("compress.quantize", f"{self.quantize!r} is not one of {', '.join(QUANTIZE)}")
        if self.warmup_rounds < 0 or (self.warmup_rounds and not self.top_k):
            raise bad("compress.warmup-rounds", "must be >= 0, and above 0 only with compress.top-k")

    def fraction(self, round_: int) -> float:
        """The share of entries kept in round `round_` (1-based): k^(r / (W + 1)) during the
        warm-up (W = 2, k = 0.1: 46%, 22%, then 10%), k after it."""
        if round_ > self.warmup_rounds:
            return self.top_k
        return self.top_k ** (round_ / (self.warmup_rounds + 1))


def _squared_norm(arrays: Any) -> float:
    return sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)


# -- Top-K --------------------------------------------------------------------------------------
def _kept_masks(tensors: Mapping[str, np.ndarray], fraction: float, scope: str) -> dict[str, np.ndarray]:
    """Boolean masks of the entries Top-K keeps, per float tensor."""
    if scope == "global":
        flat = np.concatenate([np.abs(a).ravel() for a in tensors.values()])
        k = max(1, math.ceil(fraction * flat.size))
        threshold = np.partition(flat, flat.size - k)[flat.size - k]
        return {key: np.abs(a) >= threshold for key, a in tensors.items()}
    masks = {}
    for key, array in tensors.items():
        k = max(1, math.ceil(fraction * array.size))
        keep = np.zeros(array.size, dtype=bool)
        keep[np.argpartition(np.abs(array).ravel(), array.size - k)[array.size - k:]] = True
        masks[key] = keep.reshape(array.shape)
    return masks


def varint_encode(values: np.ndarray) -> np.ndarray:
    """Non-negative integers as LEB128 varints (7 bits a byte, the high bit set on all but a
    value's last byte), vectorised."""
    values = values.astype(np.int64)
    shifts = 7 * np.arange(VARINT_BYTES)
    lengths = 1 + (values[:, None] >= (1 << shifts[1:])[None, :]).sum(axis=1)
    digits = (values[:, None] >> shifts[None, :]) & 0x7F
    more = np.arange(VARINT_BYTES)[None, :] < (lengths[:, None] - 1)
    used = np.arange(VARINT_BYTES)[None, :] < lengths[:, None]
    return (digits | (more << 7))[used].astype(np.uint8)


def varint_decode(data: np.ndarray) -> np.ndarray:
    """The integers of `varint_encode`; ValueError for a truncated or over-long value."""
    if data.dtype != np.uint8:
        raise ValueError("varints are not uint8")
    if data.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = data < 0x80
    if not last[-1]:
        raise ValueError("the last varint is cut off")
    index = np.concatenate([[0], np.cumsum(last)[:-1]])             # which value each byte belongs to
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    place = np.arange(data.size) - starts[index]                      # the byte's place in its value
    if place.max() >= VARINT_BYTES:
        raise ValueError("a varint longer than an int32")
    digits = (data & 0x7F).astype(np.int64) << (7 * place)
    return np.bincount(index, weights=digits, minlength=int(last.sum())).astype(np.int64)


def encode_positions(mask: np.ndarray) -> tuple[str, np.ndarray]:
    """The smallest of a packed bitmap, uint16 gaps, varint gaps and int32 positions for a flat mask."""
    positions = np.flatnonzero(mask.ravel())
    gaps = np.diff(positions, prepend=0)
    candidates = [(MASK, np.packbits(mask.ravel())), (GAPVAR, varint_encode(gaps))]
    if positions.size == 0 or gaps.max() < 2**16:
        candidates.append((GAP16, gaps.astype(np.uint16)))
    candidates.append((ABS32, positions.astype(np.int32)))
    return min(candidates, key=lambda c: c[1].nbytes)


def decode_positions(kind: str, data: np.ndarray, size: int) -> np.ndarray:
    """Flat positions from one of the encodings above; ValueError for one that cannot be right."""
    if kind == MASK:
        if data.dtype != np.uint8 or data.size != (size + 7) // 8:
            raise ValueError("bitmap of the wrong size")
        positions = np.flatnonzero(np.unpackbits(data)[:size])
    elif kind == GAP16:
        if data.dtype != np.uint16:
            raise ValueError("gaps are not uint16")
        positions = np.cumsum(data.astype(np.int64))
    elif kind == GAPVAR:
        positions = np.cumsum(varint_decode(data))
    elif kind == ABS32:
        if data.dtype != np.int32:
            raise ValueError("positions are not int32")
        positions = data.astype(np.int64)
    else:
        raise ValueError(f"unknown position encoding {kind!r}")
    if positions.size and (positions.min() < 0 or positions.max() >= size or np.any(np.diff(positions) <= 0)):
        raise ValueError("positions out of range or repeated")
    return positions


@dataclass(frozen=True)
class TopK:
    """Client step: keep the largest fraction k of the delta's entries, with error feedback."""
    config: CompressConfig
    name: str = "top-k"

    def describe(self) -> str:
        feedback = "with error feedback" if self.config.error_feedback else "no error feedback"
        warmup = (f", denser in the first {self.config.warmup_rounds} round(s)" if self.config.warmup_rounds else "")
        scope = "of all tensors together" if self.config.scope == "global" else "per tensor"
        return f"keep {100 * self.config.top_k:g}% of entries {scope}, {feedback}{warmup}"

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        residual: Mapping[str, np.ndarray] = ctx.state.get("residual", {}) if self.config.error_feedback else {}
        # BatchNorm statistics travel dense and without feedback: a node's statistics after training
        # already hold its whole correction, so a remembered remainder would count twice (and can
        # drive a variance negative).
        floats = sorted(k for k, v in update.tensors.items() if is_float(v) and not is_statistic(k))
        acc = {k: update.tensors[k] + residual[k] if k in residual and residual[k].shape == update.tensors[k].shape
               else update.tensors[k] for k in floats}
        fraction = self.config.fraction(ctx.round)
        masks = _kept_masks(acc, fraction, self.config.scope)
        out: Weights = {k: v for k, v in update.tensors.items() if k not in acc}  # buffers and statistics stay dense
        kept_values = np.concatenate([acc[k][masks[k]] for k in floats]) if floats else np.zeros(0, np.float32)
        if floats:
            kind, positions = encode_positions(np.concatenate([masks[k].ravel() for k in floats]))
            out[f"{FLAT}{SEP}{kind}"] = positions
            out[f"{FLAT}{SEP}{VALUES}"] = kept_values
        energy, kept_energy = _squared_norm(acc.values()), _squared_norm([kept_values])
        # The share of the delta's squared norm the kept entries hold: near 1 for a heavy-tailed
        # (SGD) delta, near k for a flat one (AdamW moves every weight by about its rate each step).
        info: dict[str, Any] = {"kept": int(sum(m.sum() for m in masks.values())),
                                "of": int(sum(a.size for a in acc.values())), "fraction": fraction,
                                "kept_energy": kept_energy / energy if energy > 0 else 1.0}
        if self.config.error_feedback:
            ctx.state["residual"] = {k: np.where(masks[k], 0, a).astype(a.dtype) for k, a in acc.items()}
            info["residual_norm"] = float(np.sqrt(_squared_norm(ctx.state["residual"].values())))
        return update.with_tensors(out).noted(self.name, **info)


# -- quantisation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantize:
    """Client step: float tensors as float16, or int8 with a per-tensor float32 scale."""
    config: CompressConfig
    name: str = "quantize"

    def describe(self) -> str:
        return ("float tensors as float16" if self.config.quantize == "fp16"
                else "float tensors as int8, one float32 scale per tensor (max |x| / 127)")

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        out: Weights = {}
        for key, array in update.tensors.items():
            if not is_float(array):
                out[key] = array
            elif self.config.quantize == "fp16":
                out[key] = array.astype(np.float16)
            else:
                peak = float(np.max(np.abs(array))) if array.size else 0.0
                scale = peak / 127 if peak > 0 else 1.0
                out[key] = np.clip(np.rint(array / scale), -127, 127).astype(np.int8)
                out[f"{key}{SEP}{SCALE}"] = np.array([scale], dtype=np.float32)
        return update.with_tensors(out).noted(self.name, format=self.config.quantize)


# -- server side --------------------------------------------------------------------------------
def _dequantize(tensors: Mapping[str, np.ndarray], quantize: str) -> Weights:
    out: Weights = {}
    for key, array in tensors.items():
        if key.endswith(SEP + SCALE):
            continue
        if quantize == "int8" and array.dtype == np.int8:
            scale = tensors.get(f"{key}{SEP}{SCALE}")
            if scale is None or scale.shape != (1,) or not np.isfinite(scale).all():
                raise ValueError(f"{key}: int8 tensor without a scale")
            out[key] = array.astype(np.float32) * np.float32(scale[0])
        elif quantize == "fp16" and array.dtype == np.float16:
            out[key] = array.astype(np.float32)
        else:
            out[key] = array
    return out


def _densify(tensors: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Weights:
    """The float tensors from the flat Top-K vector (the reference's float tensors in name order)."""
    parts = {name.partition(SEP)[2]: a for name, a in tensors.items() if name.startswith(FLAT + SEP)}
    out: Weights = {k: v for k, v in tensors.items() if not k.startswith(FLAT + SEP)}
    if not parts:
        return out
    kinds = [p for p in parts if p in POSITIONS]
    if len(kinds) != 1 or VALUES not in parts or len(parts) != 2:
        raise ValueError(f"expected kept values and one position encoding, got {sorted(parts)}")
    floats = sorted(k for k, ref in reference.items() if is_float(ref) and not is_statistic(k))
    sizes = [reference[k].size for k in floats]
    positions = decode_positions(kinds[0], parts[kinds[0]], sum(sizes))
    values = parts[VALUES]
    if values.ndim != 1 or values.size != positions.size or not is_float(values):
        raise ValueError(f"{values.size} values for {positions.size} positions")
    flat = np.zeros(sum(sizes), dtype=np.float32)
    flat[positions] = values
    for key, piece in zip(floats, np.split(flat, np.cumsum(sizes)[:-1])):
        out[key] = piece.reshape(reference[key].shape).astype(reference[key].dtype)
    return out


@dataclass(frozen=True)
class Decode:
    """Server step: undo the clients' compression (the run config says which) into dense tensors
    of the global model's dtypes, so that the checks see what will be averaged."""
    config: CompressConfig
    name: str = "decode"

    def describe(self) -> str:
        parts = ["Top-K positions + values" if self.config.top_k else "", {"fp16": "float16", "int8": "int8 + scale",
                                                                            "none": ""}[self.config.quantize]]
        return "dense tensors from " + " and ".join(p for p in parts if p)

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        try:
            tensors = _dequantize(update.tensors, self.config.quantize)
            if self.config.top_k:
                tensors = _densify(tensors, ctx.reference)
        except (ValueError, IndexError, TypeError) as exc:
            return update.reject(self.name, f"unreadable update ({exc})")
        return update.with_tensors(tensors)


def client_steps(config: CompressConfig) -> list[Any]:
    """Top-K, then quantisation (of the kept values too), as the run config asks."""
    steps: list[Any] = []
    if config.top_k:
        steps.append(TopK(config))
    if config.quantize != "none":
        steps.append(Quantize(config))
    return steps


def screen_steps(config: CompressConfig) -> list[Any]:
    return [Decode(config)] if config.top_k or config.quantize != "none" else []
