"""Split a document image (form, receipt, invoice, waybill) into text-line crops in reading order.

Classic document analysis, no learned detector: binarise (Otsu), drop table rules (long
horizontal and vertical runs found by morphological opening) and specks (tiny connected
components), deskew small angles by maximising the sharpness of the horizontal projection
profile (the "projection profile" method, Postl 1986; see also Hull, "Document image skew
detection: survey and annotated bibliography", 1998), cut the page into text rows at empty rows
of that profile, and each row into segments at wide column gaps (form fields side by side).
An image with a single text row is returned whole, as one line, so line images keep the
margins the recognizer was trained with.

Boxes are given in the input image's pixels as (x0, y0, x1, y1), x1/y1 exclusive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from fedocr.data.preprocess import normalise_contrast, to_gray

Box = tuple[int, int, int, int]
Layout = Literal["auto", "line", "page"]
LAYOUTS: tuple[str, ...] = ("auto", "line", "page")


@dataclass(frozen=True)
class SegmentConfig:
    max_skew_deg: float = 5.0        # deskew searches angles in [-max, max]
    skew_step_deg: float = 0.2
    min_skew_deg: float = 0.3        # smaller estimated angles are left alone (rotation blurs)
    min_rule_px: int = 40            # shortest run of ink treated as a table rule (also >= 1/25 of the side)
    max_rule_px: int = 6             # thickest run treated as a rule (also >= 1/40 of the short side)
    min_speck_area: int = 4          # connected components smaller than this are noise
    column_gap: float = 1.5          # a gap wider than this x row height starts a new segment
    pad_y: float = 0.2               # margins added around a crop, x row height
    pad_x: float = 0.35
    # More lines than this and the image is refused before any is recognised: a real page has tens,
    # a 2.8 KB dot grid has thousands (each a recognition, ~2 ms apiece, 16-20 s in all).
    max_lines: int = 500


class TooManyLines(ValueError):
    """The image splits into more lines than `SegmentConfig.max_lines`."""


@dataclass(frozen=True)
class LineCrop:
    image: np.ndarray                # uint8 gray crop (deskewed page)
    box: Box                         # in the input image
    row: int                         # text row, for joining segments of one row


def binarise(gray: np.ndarray) -> np.ndarray:
    """uint8 mask, 255 on ink (dark text on light paper after contrast normalisation)."""
    norm = normalise_contrast(gray)
    _, mask = cv2.threshold(cv2.GaussianBlur(norm, (3, 3), 0), 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    return mask


def remove_rules(mask: np.ndarray, config: SegmentConfig) -> np.ndarray:
    """The mask without long horizontal/vertical strokes (table rules, underlines, frames) and specks."""
    h, w = mask.shape
    # In a line-shaped image a horizontal rule (an underline, a cell border) runs far longer than
    # the line is tall; a big glyph's widest rows do not.
    longest_glyph = int(1.5 * h) if w >= 3 * h else 0
    horizontal = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(
        cv2.MORPH_RECT, (max(config.min_rule_px, w // 25, longest_glyph), 1)))
    vertical = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(
        cv2.MORPH_RECT, (1, max(config.min_rule_px, h // 25))))
    # A rule is thin; a long run that is also thick is the stroke of a big glyph (a large digit or
    # logo letter beside a line), which rule removal must not cut into fragments.
    limit = max(config.max_rule_px, min(h, w) // 40)
    horizontal = _thin_only(horizontal, axis=0, limit=limit)
    vertical = _thin_only(vertical, axis=1, limit=limit)
    rules = cv2.dilate(cv2.bitwise_or(horizontal, vertical), np.ones((3, 3), np.uint8))
    text = cv2.bitwise_and(mask, cv2.bitwise_not(rules))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(text, connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < config.min_speck_area)
    small = small[small != 0]
    if small.size:
        text[np.isin(labels, small)] = 0
    return text


def _thin_only(runs: np.ndarray, axis: int, limit: int) -> np.ndarray:
    """The components of `runs` at most `limit` pixels thick on average across their length
    (area / length, so a thin rule that is slightly slanted still counts as thin); axis 1:
    vertical runs, whose length is their height."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
    length = stats[:, cv2.CC_STAT_HEIGHT if axis == 1 else cv2.CC_STAT_WIDTH]
    thick = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] > limit * np.maximum(length, 1))
    thick = thick[thick != 0]
    if thick.size:
        runs = runs.copy()
        runs[np.isin(labels, thick)] = 0
    return runs


def _rotation(shape: tuple[int, int], angle: float) -> np.ndarray:
    h, w = shape
    return cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)


def estimate_skew(mask: np.ndarray, config: SegmentConfig) -> float:
    """Angle (degrees, cv2 convention) that makes text rows horizontal: the one whose row
    profile has the largest sum of squared differences (sharp rows, clean gaps)."""
    scale = min(1.0, 800 / max(mask.shape))
    small = cv2.resize(mask, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else mask
    best, best_score = 0.0, -1.0
    for angle in np.arange(-config.max_skew_deg, config.max_skew_deg + 1e-9, config.skew_step_deg):
        rotated = cv2.warpAffine(small, _rotation(small.shape, float(angle)), small.shape[::-1],
                                 flags=cv2.INTER_NEAREST, borderValue=0)
        profile = rotated.sum(axis=1, dtype=np.float64)
        score = float(np.square(np.diff(profile)).sum())
        if score > best_score:
            best, best_score = float(angle), score
    return best


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], active, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def text_rows(mask: np.ndarray) -> list[tuple[int, int]]:
    """Rows of text as [y0, y1): runs of inked rows, with thin runs (dots, accents, stray
    strokes) merged into their nearest neighbour and over-tall runs split at their emptiest row."""
    profile = (mask > 0).sum(axis=1)
    rows = _runs(profile > 0)
    if not rows:
        return []
    typical = float(np.median([b - a for a, b in rows]))
    merged: list[list[int]] = []
    for a, b in rows:
        if merged and (b - a < 0.4 * typical or merged[-1][1] - merged[-1][0] < 0.4 * typical) \
                and a - merged[-1][1] < 0.3 * typical:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    out: list[tuple[int, int]] = []
    typical = float(np.median([b - a for a, b in merged]))
    for a, b in merged:
        out.extend(_split_tall(profile, a, b, typical))
    return [(a, b) for a, b in out if b - a >= 3]


def _split_tall(profile: np.ndarray, a: int, b: int, typical: float) -> list[tuple[int, int]]:
    if b - a < 1.8 * typical or typical < 4:
        return [(a, b)]
    lo, hi = a + int(0.6 * typical), b - int(0.6 * typical)
    if hi <= lo:
        return [(a, b)]
    cut = lo + int(np.argmin(profile[lo:hi]))
    return _split_tall(profile, a, cut, typical) + _split_tall(profile, cut, b, typical)


def _segments(mask: np.ndarray, y0: int, y1: int, gap: float) -> list[tuple[int, int]]:
    cols = _runs((mask[y0:y1] > 0).any(axis=0))
    merged: list[list[int]] = []
    for a, b in cols:
        if merged and a - merged[-1][1] <= gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def looks_like_one_line(mask: np.ndarray, rows: list[tuple[int, int]]) -> bool:
    """Whether the rows found in a line-shaped image are one line plus debris: the fragments an
    underline, a cell border or a stamp leaves after rule removal, or a tall neighbouring glyph
    cut off by the row split. One row holds most of the ink and the others are thin slivers or
    overlap it; a real second line of text has its own full-height row."""
    if len(rows) <= 1:
        return True
    h, w = mask.shape
    if w < 3 * h:                       # not line-shaped: a block of text, a form, a page
        return False
    heights = [b - a for a, b in rows]
    ink = [(mask[a:b] > 0).sum() for a, b in rows]
    main = int(np.argmax(ink))
    others = [i for i in range(len(rows)) if i != main]
    return (ink[main] >= 0.75 * sum(ink)
            and all(heights[i] < 0.6 * heights[main] or ink[i] < 0.1 * ink[main] for i in others))


def split_lines(image: np.ndarray, config: SegmentConfig = SegmentConfig(), layout: Layout = "auto") -> list[LineCrop]:
    """A page -> line crops in reading order (rows top to bottom, segments left to right).

    `layout`: "line" takes the image as one line; "page" always segments; "auto" takes an image
    with a single text row (an underline, table rules, a stamp or a tall glyph beside the text
    do not make a second one) as one line and segments the rest. No ink gives no lines.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    gray = to_gray(image)
    h, w = gray.shape
    whole = [LineCrop(gray, (0, 0, w, h), 0)]
    if layout == "line" or h < 8 or w < 8:
        return whole
    raw = binarise(gray)
    mask = remove_rules(raw, config)
    if not mask.any() and raw.any():
        # Only the rules were dark enough for Otsu (faint text under a black underline): paint them
        # out with the paper's grey and look again.
        paper = int(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
        mask = remove_rules(binarise(np.where(raw > 0, paper, gray).astype(np.uint8)), config)
    if not mask.any():
        return []
    if layout == "auto" and looks_like_one_line(mask, text_rows(mask)):
        return whole
    # Rules are the clearest skew signal, so estimate on the raw mask; remove them after deskewing,
    # when they are straight again.
    angle = estimate_skew(raw, config)
    inverse = None
    if abs(angle) >= config.min_skew_deg:
        forward = _rotation((h, w), angle)
        paper = int(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
        gray = cv2.warpAffine(gray, forward, (w, h), flags=cv2.INTER_LINEAR, borderValue=paper)
        mask = remove_rules(binarise(gray), config)
        inverse = cv2.invertAffineTransform(forward)
    rows = text_rows(mask)
    crops: list[LineCrop] = []
    for row, (y0, y1) in enumerate(rows):
        height = y1 - y0
        for x0, x1 in _segments(mask, y0, y1, config.column_gap * height):
            seg = mask[y0:y1, x0:x1]
            ys = np.flatnonzero(seg.any(axis=1))
            if ys.size == 0 or (seg > 0).sum() < config.min_speck_area * 2:
                continue
            if len(crops) == config.max_lines:  # stop here: the rest of the page need not be cut either
                raise TooManyLines(f"more than {config.max_lines} text lines in one image (the line limit)")
            ty0, ty1 = y0 + int(ys[0]), y0 + int(ys[-1]) + 1
            py, px = int(config.pad_y * height) + 2, int(config.pad_x * height) + 2
            box = (max(0, x0 - px), max(0, ty0 - py), min(w, x1 + px), min(h, ty1 + py))
            crops.append(LineCrop(gray[box[1]:box[3], box[0]:box[2]], _to_input(box, inverse, w, h), row))
    return crops


def _to_input(box: Box, inverse: np.ndarray | None, w: int, h: int) -> Box:
    """A box on the deskewed page -> the axis-aligned box around it on the input image."""
    if inverse is None:
        return box
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]], dtype=np.float64)
    mapped = corners @ inverse.T
    return (max(0, int(np.floor(mapped[:, 0].min()))), max(0, int(np.floor(mapped[:, 1].min()))),
            min(w, int(np.ceil(mapped[:, 0].max()))), min(h, int(np.ceil(mapped[:, 1].max()))))
