"""An organisation's own equipment: the printers and scanners that mark its documents.

The public pretraining corpus is laser-printed text, scanned or photographed. Real organisations
also read what their own machines make, and the shipped base model has never seen it: a hospital's
24-pin dot-matrix prescription and lab slips, a bank's faxed instructions, pupils' handwriting,
a courier's thermal-printed labels with dead print-head elements. That private look is what makes
federated fine-tuning worth doing, so the federation presets give each organisation one device.

A device acts at one stage of a line's life: `print` (on the clean rendering, before the
scan/photo degradations) or `scan` (on the degraded image, as a fax machine binarises what it
reads). Each takes an explicit `np.random.Generator` and returns a new uint8 image.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np


def _paper_and_ink(image: np.ndarray) -> tuple[float, float]:
    """Grey levels of the paper (light) and the darkest ink of a line."""
    light, dark = np.percentile(image, (90, 1))
    return float(light), float(dark)


def dot_matrix(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 24-pin impact printer: each glyph is a grid of round dots about 1/24 of a line apart."""
    h, w = image.shape
    paper, ink_tone = _paper_and_ink(image)
    ink = paper - image.astype(np.float32)
    pitch = max(1.6, h / float(rng.uniform(26, 34)))
    grid = cv2.resize(ink, (max(1, int(w / pitch)), max(1, int(h / pitch))), interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(grid > 0.35 * max(float(ink.max()), 1.0))
    centres = np.zeros((h, w), np.uint8)
    centres[np.minimum(((ys + 0.5) * pitch).astype(int), h - 1), np.minimum(((xs + 0.5) * pitch).astype(int), w - 1)] = 1
    diameter = max(2, int(round(pitch * float(rng.uniform(0.7, 1.0)))))  # pins a little smaller than their pitch
    dots = cv2.dilate(centres, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter)))
    tone = min(paper - 40.0, ink_tone + float(rng.uniform(0, 50)))  # a worn ribbon prints lighter
    return np.where(dots > 0, tone, paper).clip(0, 255).astype(np.uint8)


def fax(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fax at standard resolution: half the vertical resolution, hard black/white, speckles."""
    h, w = image.shape
    # About 10 pt type at 100 dpi: 14-22 rows per glyph (glyphs fill ~70% of a line image), and
    # the horizontal resolution twice the vertical one.
    rows = min(1.0, float(rng.uniform(14, 22)) / (0.7 * h))
    small = cv2.resize(image, (max(1, int(w * min(1.0, 2 * rows))), max(1, int(h * rows))),
                       interpolation=cv2.INTER_AREA)
    # Automatic background control: the paper level is followed along the line, so uneven light
    # does not black out half of it.
    size = max(3, small.shape[0] | 1)
    paper_level = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))).astype(np.float32)
    small = np.clip(small.astype(np.float32) / np.maximum(paper_level, 1.0) * 255.0, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    light, dark = _paper_and_ink(small)
    contrast = max(light - dark, 1.0)
    # The fax's contrast knob, within the line's own range: a fixed offset would black out a
    # low-contrast scan whose whole range is narrower than the offset.
    threshold = np.clip(otsu + rng.uniform(-0.15, 0.15) * contrast, dark + 0.25 * contrast, light - 0.25 * contrast)
    binary = np.where(small > threshold, 255, 0).astype(np.uint8)
    speckle = rng.random(binary.shape) < rng.uniform(0.003, 0.012)
    binary[speckle] = 255 - binary[speckle]
    return cv2.resize(binary, (w, h), interpolation=cv2.INTER_NEAREST)


def handwriting(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pen strokes rather than type: a smooth random warp of the line, drawn with a broader or a
    finer pen than the font's stroke."""
    h, w = image.shape
    amplitude = float(rng.uniform(1.5, 3.0)) * h / 40
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = []
    for grid in (xs, ys):
        field = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), h / 5)
        warped.append(grid + field * (amplitude / (float(field.std()) + 1e-6)))
    out = cv2.remap(image, warped[0], warped[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    pen = int(rng.integers(0, 3))  # 0: as drawn, 1: a broad pen, 2: a fine one (ink is dark)
    if pen:
        out = (cv2.erode if pen == 1 else cv2.dilate)(out, np.ones((2, 2), np.uint8))
    return out


def thermal(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A thermal label printer: faded ink and thin white streaks where print-head dots died."""
    paper, _ = _paper_and_ink(image)
    fade = float(rng.uniform(0.25, 0.6))
    out = paper - (paper - image.astype(np.float32)) * fade
    w = image.shape[1]
    for _ in range(int(rng.integers(4, 13))):
        # The head spans the paper's width and the paper feeds past it: a dead dot leaves a
        # white streak down the receipt, i.e. across the text line.
        x = int(rng.integers(0, w))
        out[:, x:x + int(rng.integers(1, 3))] = paper
    return out.clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Device:
    """A named transform and the stage of a line's life where it acts."""

    name: str
    stage: Literal["print", "scan"]
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]


DEVICES: dict[str, Device] = {d.name: d for d in [
    Device("dot-matrix", "print", dot_matrix),
    Device("handwriting", "print", handwriting),
    Device("thermal", "print", thermal),
    Device("fax", "scan", fax),
]}
