"""Canaries: random secrets of a fixed format planted in an organisation's training lines.

Carlini, Liu, Erlingsson, Kos and Song, "The Secret Sharer: Evaluating and Testing Unintended
Memorization in Neural Networks" (USENIX Security 2019, arXiv:1802.08232). A canary here is an
ID or account number: a fixed prefix in the organisation's own vocabulary followed by D random
digits (the bank's `账号` + 8 digits; `银行` + digits in the 22-character mini vocabulary, which
has no `号`). It is planted k times as k renderings in the organisation's own style (fonts,
paper, device), as one patient's number shows up on k of a hospital's forms.

This module makes secrets and renders lines; `fedocr.train.audit` measures what a model
memorised of them.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedocr.charset import Charset
from fedocr.data.datasets import ConcatLines, InMemoryLines, LineDataset, SyntheticLines
from fedocr.data.presets import Preset

# The prefix each organisation writes before a number of the kind it keeps private.
PREFIXES = {"hospital": "病历号", "bank": "账号", "school": "学号", "logistics": "运单号"}
MINI_PREFIXES = {"hospital": "医院", "bank": "银行", "school": "学校"}
DIGITS = "0123456789"
INK_BELOW_PAPER = 60   # grey levels under the paper that count as ink on a clean rendering


@dataclass(frozen=True)
class SecretFormat:
    """`prefix` followed by `digits` random digits."""
    prefix: str
    digits: int

    def __post_init__(self) -> None:
        if self.digits < 1:
            raise ValueError("a secret needs at least one digit")

    def text(self, number: str) -> str:
        return self.prefix + number

    def draw(self, rng: random.Random) -> str:
        return self.text("".join(rng.choice(DIGITS) for _ in range(self.digits)))

    def describe(self) -> str:
        return f"{self.prefix} + {self.digits} digits"


def prefix_for(org: str, mini: bool) -> str:
    """The organisation's prefix; one without its own writes `编号` (`人民` in mini runs: no `号` there)."""
    return (MINI_PREFIXES if mini else PREFIXES).get(org, "人民" if mini else "编号")


def draw_secrets(fmt: SecretFormat, n: int, rng: random.Random, exclude: Sequence[str] = ()) -> list[str]:
    """`n` distinct secrets of `fmt`, none of them in `exclude`."""
    if n > 10 ** fmt.digits - len(exclude):
        raise ValueError(f"cannot draw {n} distinct secrets of {fmt.describe()}")
    taken, out = set(exclude), []
    while len(out) < n:
        secret = fmt.draw(rng)
        if secret not in taken:
            taken.add(secret)
            out.append(secret)
    return out


def _constant(text: str, rng: random.Random) -> str:
    return text


def fixed_text(preset: Preset, text: str) -> Preset:
    """The preset's style (fonts, conditions, device) writing one text on every line."""
    return replace(preset, name=f"{preset.name}:fixed", text=functools.partial(_constant, text))


def renderings(preset: Preset, text: str, n: int, seed: int, charset: Charset) -> InMemoryLines:
    """`n` renderings of `text` in the preset's style; rendering i is a pure function of (seed,
    i), whatever the text, so two texts rendered with one seed share font, size and noise draws."""
    return InMemoryLines(SyntheticLines(fixed_text(preset, text), n, seed=seed, charset=charset))


def canary_lines(preset: Preset, secrets: Sequence[str], repeats: int, seed: int, charset: Charset) -> LineDataset:
    """Each secret rendered `repeats` times, each secret on its own rendering seeds."""
    parts = [renderings(preset, s, repeats, seed=seed + 7919 * i, charset=charset) for i, s in enumerate(secrets)]
    return ConcatLines(parts, name="canaries")


def with_lines(data: LineDataset, extra: LineDataset) -> LineDataset:
    """`data` followed by `extra`, under `data`'s name (training shuffles the order)."""
    return ConcatLines([data, extra], name=data.name)


def clean(preset: Preset) -> Preset:
    """The preset's fonts and sizes on clean paper: no degradation, no device, so the rendering's
    geometry is exact (used to mask part of a line)."""
    off = dict(low_contrast=0.0, blur=0.0, motion_blur=0.0, noise=0.0, jpeg=0.0, uneven_light=0.0, rotation_deg=0.0,
               perspective=0.0, stamp=0.0, rules=0.0, stains=0.0, device="", device_rate=0.0)
    return replace(preset, conditions=replace(preset.conditions, **off))


def occluded(preset: Preset, text: str, hidden: int, seed: int, charset: Charset) -> np.ndarray:
    """A clean rendering of `text` with its last `hidden` characters painted over with paper.

    The line is rendered twice from one seed (same face, size, margins), once whole and once
    without its tail; everything right of the shorter one's last ink column is blanked on the
    whole one, so the image keeps the tail's width but none of its ink."""
    if not 0 < hidden < len(text):
        raise ValueError(f"hide between 1 and {len(text) - 1} characters of {text!r}")
    style = clean(preset)
    whole = renderings(style, text, 1, seed, charset)[0][0]
    head = renderings(style, text[:-hidden], 1, seed, charset)[0][0]
    if whole.shape[0] != head.shape[0]:
        raise ValueError(f"{text!r}: its head renders at another height; cannot mask its tail")
    ink = np.flatnonzero((head < int(head.max()) - INK_BELOW_PAPER).any(axis=0))
    out = whole.copy()
    out[:, int(ink[-1]) + 1 if ink.size else 0:] = int(whole.max())
    return out
