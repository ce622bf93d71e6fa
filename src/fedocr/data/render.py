"""Render a text line with a real font and degrade it the way scans and phone photos do.

`render_line` draws clean text (font, size, letter spacing, ink and paper tone, optional stamp
and ruled lines); `degrade` then applies the image conditions of a preset (blur, noise, JPEG,
low contrast, uneven light, small rotation and perspective, stains). Both take an explicit
`np.random.Generator`, so a line is a pure function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fedocr.data.devices import DEVICES
from fedocr.data.fonts import FontFace


@dataclass(frozen=True)
class Conditions:
    """How a preset's documents look; probabilities are per line."""

    font_px: tuple[int, int] = (24, 44)          # glyph size range before normalisation to 32 px
    letter_spacing: tuple[float, float] = (-0.05, 0.25)  # extra space between characters, x font size
    paper: tuple[int, int] = (215, 255)          # background grey level
    ink: tuple[int, int] = (0, 70)               # text grey level
    low_contrast: float = 0.1                    # chance of squeezing ink and paper together
    blur: float = 0.25
    motion_blur: float = 0.05
    noise: float = 0.3                           # chance of Gaussian sensor noise
    jpeg: float = 0.3
    uneven_light: float = 0.15
    rotation_deg: float = 1.5
    perspective: float = 0.15
    stamp: float = 0.0
    rules: float = 0.1                           # table rules / underlines near the text
    stains: float = 0.05
    latin_font: float = 0.5                      # chance that ASCII runs use a Western font
    device: str = ""                             # an organisation's own printer/scanner (data.devices)
    device_rate: float = 0.0                     # share of its lines that went through that device
    # Scale and drawing as other renderers and real crops have them (off in the domain presets,
    # so their lines render as they always did):
    small_text: float = 0.0                      # chance of 9-20 px glyphs (small print, upscaled later)
    large_text: float = 0.0                      # chance of 45-80 px glyphs (big type, downscaled later)
    aliased: float = 0.0                         # chance of bi-level glyphs (screen text without smoothing)
    shaped_runs: bool = False                    # draw each one-face run whole: kerning and ligatures
    ink_cut: float = 0.0                         # chance of a detector's cut: the ink's box plus margins of its height
    condense: float = 0.0                        # chance of condensed setting: the line narrowed to CONDENSE of its width
    cell_rules: float = 0.0                      # chance of an office underline and/or table cell (_in_cell)

    def __post_init__(self) -> None:
        if self.device and self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if not 0 <= self.device_rate <= 1 or (self.device_rate > 0 and not self.device):
            raise ValueError(f"device rate {self.device_rate!r} must be in [0, 1], and above 0 only with a device")


# Word processors and PDFs set type denser than our faces draw it (bench/line_density.py measures
# the width per character that the model sees, on the external sets and on ours).
CONDENSE = (0.7, 0.95)


@lru_cache(maxsize=256)
def _font(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=size, index=index)


def _is_ascii_glyph(char: str) -> bool:
    return " " < char <= "~"


def render_line(text: str, face: FontFace, rng: np.random.Generator, cond: Conditions,
                latin: FontFace | None = None) -> np.ndarray:
    """Clean grey line image (uint8, paper light, ink dark) with margins around the text.

    With `latin`, ASCII characters are drawn with that Western face and the rest with `face`,
    on one baseline, as a browser or word processor draws a mixed Chinese/English line.
    """
    size = _font_size(rng, cond)
    font = _font(face.path, face.index, size)
    spacing = float(rng.uniform(*cond.letter_spacing)) * size if rng.random() < 0.4 else 0.0
    if latin is not None and any(_is_ascii_glyph(c) for c in text):
        western = _font(latin.path, latin.index, size)
        fonts = [western if _is_ascii_glyph(c) else font for c in text]
    else:
        fonts = [font] * len(text)
    pieces = list(zip(text, fonts))
    if cond.shaped_runs and not spacing:  # a run of one face is laid out whole, as a browser does
        pieces = _runs(pieces)
    advances = [f.getlength(t) for t, f in pieces]
    width = int(sum(advances) + spacing * max(len(pieces) - 1, 0)) + 1
    metrics = [f.getmetrics() for f in set(fonts) or {font}]
    ascent, descent = max(m[0] for m in metrics), max(m[1] for m in metrics)
    pad_x = int(rng.integers(2, size // 2 + 3))
    pad_top, pad_bottom = int(rng.integers(1, size // 3 + 2)), int(rng.integers(1, size // 3 + 2))
    paper = int(rng.integers(*cond.paper)) if cond.paper[1] > cond.paper[0] else cond.paper[0]
    ink = int(rng.integers(*cond.ink)) if cond.ink[1] > cond.ink[0] else cond.ink[0]
    canvas = Image.new("L", (max(width, 1) + 2 * pad_x, ascent + descent + pad_top + pad_bottom), paper)
    draw = ImageDraw.Draw(canvas)
    if cond.aliased and rng.random() < cond.aliased:
        draw.fontmode = "1"
    if rng.random() < cond.stamp:
        _draw_stamp(draw, canvas.size, rng, paper)
    if spacing or any(f is not font for f in fonts):  # piece by piece: spacing, or a Western face
        x, baseline = float(pad_x), pad_top + ascent
        for (piece, piece_font), advance in zip(pieces, advances):
            draw.text((x, baseline), piece, font=piece_font, fill=ink, anchor="ls")
            x += advance + spacing
    else:
        draw.text((pad_x, pad_top), text, font=font, fill=ink)
    if rng.random() < cond.rules:
        _draw_rules(draw, canvas.size, rng, ink, pad_top, ascent + descent)
    underline = boxed = False
    if cond.cell_rules and rng.random() < cond.cell_rules:   # drawn only when asked, as _font_size
        kind = rng.random()   # an underline, a cell's box, or both
        underline, boxed = kind < 0.7, kind > 0.4
    if underline:
        _draw_underline(draw, rng, ink, (pad_x, pad_x + width), pad_top + ascent, descent, size)
    line = np.asarray(canvas, dtype=np.uint8)
    if boxed:
        line = _in_cell(line, rng, paper, ink)
    if cond.ink_cut and rng.random() < cond.ink_cut:  # drawn only when asked, as _font_size
        line = cut_to_ink(line, rng)
    if cond.condense and rng.random() < cond.condense:
        width = max(1, round(line.shape[1] * float(rng.uniform(*CONDENSE))))
        line = cv2.resize(line, (width, line.shape[0]), interpolation=cv2.INTER_AREA)
    return line


def cut_to_ink(line: np.ndarray, rng: np.random.Generator, margin: tuple[float, float] = (0.0, 0.45)) -> np.ndarray:
    """The line as a text detector cuts it: the box of its ink plus margins drawn per side as a
    share of the ink's height. Our canvas is as tall as the font's ascent plus descent, so without
    this the size of a letter against the image's height says its case; a detector's box follows
    the ink, and a line without descenders (`seen in ancient Solaris`) then looks all capitals."""
    paper = int(_border_tone(line))
    ink = np.abs(line.astype(np.int16) - paper) > 40
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return line
    ink_height = rows[-1] - rows[0] + 1
    top, bottom, left, right = (int(round(ink_height * m)) for m in rng.uniform(*margin, size=4))
    cut = line[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return np.pad(cut, ((top, bottom), (left, right)), constant_values=paper)


def _border_tone(image: np.ndarray) -> float:
    """The paper's grey level, from the top and bottom rows (text rarely touches them)."""
    return float(np.median(np.concatenate([image[0], image[-1]])))


def _font_size(rng: np.random.Generator, cond: Conditions) -> int:
    low, high = cond.font_px
    if cond.small_text or cond.large_text:  # drawn only when asked: other presets keep their streams
        pick = rng.random()
        if pick < cond.small_text:
            low, high = 9, 20
        elif pick < cond.small_text + cond.large_text:
            low, high = 45, 80
    return int(rng.integers(low, high + 1))


def _runs(pieces: list[tuple[str, ImageFont.FreeTypeFont]]) -> list[tuple[str, ImageFont.FreeTypeFont]]:
    """Consecutive characters of one face joined into one piece."""
    runs: list[tuple[str, ImageFont.FreeTypeFont]] = []
    for text, font in pieces:
        if runs and runs[-1][1] is font:
            runs[-1] = (runs[-1][0] + text, font)
        else:
            runs.append((text, font))
    return runs


def _draw_stamp(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: np.random.Generator, paper: int) -> None:
    """A red seal seen in grey: a ring (and a star) of mid-grey behind the text."""
    w, h = size
    r = int(h * rng.uniform(0.5, 1.1))
    cx, cy = int(rng.integers(0, max(w, 1))), int(h * rng.uniform(0.2, 0.8))
    tone = int(max(paper - rng.integers(50, 110), 0))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=tone, width=max(2, r // 10))
    draw.regular_polygon((cx, cy, r // 3), 5, fill=tone)


def _draw_rules(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: np.random.Generator, ink: int,
                top: int, text_h: int) -> None:
    """Table rules or an underline: a horizontal line at an edge, sometimes vertical cell borders."""
    w, h = size
    tone = min(255, ink + int(rng.integers(0, 80)))
    y = top + text_h + int(rng.integers(0, 3)) if rng.random() < 0.6 else max(0, top - int(rng.integers(1, 4)))
    draw.line((0, min(y, h - 1), w, min(y, h - 1)), fill=tone, width=int(rng.integers(1, 3)))
    if rng.random() < 0.3:
        x = int(rng.integers(0, 3))
        draw.line((x, 0, x, h), fill=tone, width=1)
        draw.line((w - 1 - x, 0, w - 1 - x, h), fill=tone, width=1)


# A word processor's underline and table cell, where office-lines reads worst (bench/data/office-lines):
def _draw_underline(draw: ImageDraw.ImageDraw, rng: np.random.Generator, ink: int, text_x: tuple[int, int],
                    baseline: int, descent: int, font_px: int) -> None:
    """An underline under the text only, just below the baseline and through the descenders
    (where `_draw_rules`' rule, below the font's descent, never is)."""
    y = baseline + int(round(descent * rng.uniform(0.1, 0.6)))
    thickness = max(1, int(round(font_px * rng.uniform(0.04, 0.08))))
    draw.line((text_x[0], y, text_x[1], y), fill=ink, width=thickness)


def _in_cell(line: np.ndarray, rng: np.random.Generator, paper: int, ink: int) -> np.ndarray:
    """The line inside a table cell's box of 1-2 px borders, the crop being the cell: a little
    paper between the box and the line's canvas (so the box never crosses a glyph) and 1-2 px
    outside it (so `_border_tone` still finds the paper there); sometimes a side is missing, as
    when a crop runs past the cell's edge."""
    border = int(rng.integers(1, 3))
    inside, outside = rng.integers(1, 4, size=4), rng.integers(1, 3, size=4)   # top, bottom, left, right
    pads = outside + border + inside
    cell = np.pad(line, ((pads[0], pads[1]), (pads[2], pads[3])), constant_values=paper)
    h, w = cell.shape
    top, bottom, left, right = outside[0], h - outside[1] - border, outside[2], w - outside[3] - border
    tone = min(255, ink + int(rng.integers(0, 60)))
    sides = [(slice(top, top + border), slice(left, right + border)),
             (slice(bottom, bottom + border), slice(left, right + border)),
             (slice(top, bottom + border), slice(left, left + border)),
             (slice(top, bottom + border), slice(right, right + border))]
    missing = int(rng.integers(0, 8))   # 0-3: that side is missing; 4-7: all four drawn
    for i, (rows, cols) in enumerate(sides):
        if i != missing:
            cell[rows, cols] = tone
    return cell


def degrade(image: np.ndarray, rng: np.random.Generator, cond: Conditions) -> np.ndarray:
    """Apply scan/photo degradations; returns a new uint8 image."""
    img = image.astype(np.float32)
    h, w = img.shape
    border = _border_tone(img)
    if cond.rotation_deg and rng.random() < 0.5:
        angle = float(rng.uniform(-cond.rotation_deg, cond.rotation_deg))
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        img = cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=border)
    if rng.random() < cond.perspective:
        jitter = 0.06 * h
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dst = (src + rng.uniform(-jitter, jitter, src.shape)).astype(np.float32)
        img = cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderValue=border)
    if rng.random() < cond.uneven_light:
        ramp = np.linspace(rng.uniform(-60, 0), rng.uniform(0, 30), w, dtype=np.float32)
        img = img + (ramp if rng.random() < 0.5 else ramp[::-1])[None, :]
    if rng.random() < cond.stains:
        mask = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(3, max(4, h))), int(rng.integers(2, max(3, h // 2))))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        img = img - cv2.GaussianBlur(mask, (0, 0), 3) * rng.uniform(20, 70)
    if rng.random() < cond.low_contrast:
        mid, squeeze = float(rng.uniform(110, 200)), float(rng.uniform(0.2, 0.5))
        img = mid + (img - mid) * squeeze
    if rng.random() < cond.blur:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.4)))
    if rng.random() < cond.motion_blur:
        k = int(rng.integers(3, 7))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        img = cv2.filter2D(img, -1, kernel)
    if rng.random() < cond.noise:
        img = img + rng.normal(0, rng.uniform(3, 18), img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < cond.jpeg:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 80))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out
