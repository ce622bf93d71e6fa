"""The one preprocessing function used by training, evaluation and serving alike.

grayscale -> ink dark on light (inverted if needed) -> contrast normalisation (CLAHE for flat,
low-contrast scans, then a robust percentile stretch) -> excess paper above and below a loosely
cut line trimmed -> height 32 keeping the aspect ratio ->
width padded to a multiple of 4 with background. The result is float32 with background 0 and
ink near 1, which is what the CRNN's zero padding assumes.
"""
from __future__ import annotations

import cv2
import numpy as np

from fedocr.model.config import INPUT_HEIGHT, WIDTH_STRIDE

MAX_LINE_WIDTH = 4096          # after height normalisation; ~ a 128:1 line. Wider is squeezed.
# A loosely cut line (ink under half the height) keeps 0.4x the ink's height of paper above and
# below (about the most our synthetic lines carry), and at least 0.35x its own height.
TRIM_BELOW, MARGIN_OF_INK, KEEP_AT_LEAST = 0.5, 0.4, 0.35


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 H x W from gray, RGB, RGBA (alpha composited on white) or 16-bit input."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (img / max(float(img.max()), 1.0) * 255).astype(np.uint8) if img.dtype.kind in "uif" else img.astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float32) / 255.0
        img = (img[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY) if img.shape[2] >= 3 else img[..., 0]
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {np.asarray(image).shape}")
    return np.ascontiguousarray(img)


def normalise_contrast(gray: np.ndarray) -> np.ndarray:
    """Dark text on light paper, stretched to the full range."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    dark, light = np.percentile(gray, (5, 95))
    # The background is the side of the range the border sits on: light text on dark paper is
    # inverted, while dim photos of dark ink on grey paper are not.
    if np.median(border) - dark < light - np.median(border):
        gray = 255 - gray
    lo, hi = np.percentile(gray, (2, 98))
    if hi - lo < 60:  # a flat scan: local equalisation first, then stretch
        # A CLAHE object per call (microseconds): one shared object is not thread-safe, and the
        # engine preprocesses on two threads (concurrent flat scans raised OpenCV assertions).
        gray = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(1, 8)).apply(gray)
        lo, hi = np.percentile(gray, (2, 98))
    if hi - lo < 1:
        return np.full_like(gray, 255)
    stretched = (gray.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(stretched, 0, 255).astype(np.uint8)


def text_rows(gray: np.ndarray) -> tuple[int, int]:
    """(top, bottom) of the rows to keep. A line cut loosely from a page (a PDF line box, a
    table cell: ink under half the height) is otherwise shrunk to a few pixels by the height
    normalisation, so the paper above and below is cut down to 0.4x the ink's height; the rows
    kept are at least 0.35x the image's height, so a line of flat marks (一, dashes, dots) is
    not blown up into bars. Lines cut as our synthetic ones are stay whole, and so do columns:
    the blank beside a full-width bracket is what tells （ from (. Expects a contrast-normalised
    image (ink < 128)."""
    height = gray.shape[0]
    rows = np.flatnonzero((gray < 128).any(axis=1))
    if rows.size == 0:
        return 0, height
    ink_height = int(rows[-1] - rows[0] + 1)
    if ink_height >= TRIM_BELOW * height:
        return 0, height
    margin = int(np.ceil(MARGIN_OF_INK * ink_height))
    extra = max(0, int(np.ceil(KEEP_AT_LEAST * height)) - (ink_height + 2 * margin))
    top = max(0, int(rows[0]) - margin - extra // 2)
    return top, min(height, int(rows[-1]) + 1 + margin + (extra - extra // 2))


def kept_height(image: np.ndarray) -> int:
    """How many of the image's rows preprocessing keeps (maps the model's columns back to it)."""
    top, bottom = text_rows(normalise_contrast(to_gray(image)))
    return bottom - top


def trim_margins(gray: np.ndarray) -> np.ndarray:
    top, bottom = text_rows(gray)
    return gray[top:bottom]


def resized_width(height: int, width: int) -> int:
    """The width a (height, width) line has after preprocessing, before padding (aspect kept)."""
    return min(max(int(round(width * INPUT_HEIGHT / height)), WIDTH_STRIDE), MAX_LINE_WIDTH)


def preprocess(image: np.ndarray) -> np.ndarray:
    """Any line image -> float32 (32, W), W a multiple of 4, background 0, ink ~1."""
    gray = trim_margins(normalise_contrast(to_gray(image)))
    h, w = gray.shape
    width = resized_width(h, w)
    interp = cv2.INTER_AREA if h > INPUT_HEIGHT else cv2.INTER_CUBIC
    resized = cv2.resize(gray, (width, INPUT_HEIGHT), interpolation=interp)
    ink = 1.0 - resized.astype(np.float32) / 255.0
    pad = (-width) % WIDTH_STRIDE
    if pad:
        ink = np.pad(ink, ((0, 0), (0, pad)))
    return np.clip(ink, 0.0, 1.0)
