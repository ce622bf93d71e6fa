"""A corpus of hostile and odd uploads, generated (never committed as binaries): what a careless or
hostile user sends an OCR service. Used by tests/test_hostile_inputs.py and bench/hostile.py."""
from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from serve_fixtures import dot_grid, png, png_header_only, render_page


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def hostile_corpus() -> dict[str, bytes]:
    """Name -> file bytes; each must end in a result or a clear 4xx, never a 5xx or a traceback."""
    rng = np.random.default_rng(17)
    page = png(render_page(3, seed=5).image)
    gray16 = Image.fromarray((render_page(2, seed=6).image.astype(np.uint16) * 257))
    nan_tiff = render_page(2, seed=7).image.astype(np.float32) / 255
    nan_tiff[5, 5] = np.nan
    palette = Image.fromarray(render_page(2, seed=8).image).convert("P")
    palette.info["transparency"] = 0
    frames = [Image.fromarray(render_page(2, seed=s).image) for s in (9, 10)]
    exif = Image.fromarray(render_page(2, seed=11).image).getexif()
    exif[0x0112] = 6   # "rotate 90° clockwise to view"
    return {
        "dot-grid-300": png(dot_grid(300)),                          # 900 specks
        "dot-grid-1000": png(dot_grid(1000)),                        # 10,000 specks: over the line limit
        "dot-grid-fine-2400": png(dot_grid(2400, step=8, dot=2)),   # 90,000 specks
        "bomb-header": png_header_only(100_000, 100_000),
        "zero-pixels": png_header_only(0, 10),
        "truncated-png": page[: len(page) // 2],
        "empty": b"",
        "random-bytes": random.Random(3).randbytes(4096),
        "text-file": b"name,amount\nAlice,12\n",
        "one-pixel": png(np.zeros((1, 1), np.uint8)),
        "wide-strip": png(np.full((1, 6000), 255, np.uint8)),
        "tall-strip": png(np.full((6000, 1), 255, np.uint8)),
        "over-max-side": png(np.full((8, 20_000), 255, np.uint8)),
        "all-black": png(np.zeros((800, 800), np.uint8)),
        "noise": png(rng.integers(0, 256, (500, 500), dtype=np.uint8)),
        "gray16-png": _encode(gray16, "PNG"),
        "float-tiff-with-nan": _encode(Image.fromarray(nan_tiff, mode="F"), "TIFF"),
        "cmyk-jpeg": _encode(Image.fromarray(render_page(2, seed=12).image).convert("CMYK"), "JPEG"),
        "palette-alpha-png": _encode(palette, "PNG"),
        "animated-gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "exif-rotated-jpeg": _encode(Image.fromarray(render_page(2, seed=11).image), "JPEG", exif=exif),
    }
