"""Decode an uploaded image in memory, within limits on bytes and pixels.

Pillow reads the header first, so the pixel count is checked before any pixel is decoded: a
small file that would expand to gigapixels (a decompression bomb) is refused cheaply. Every way
an upload can be wrong becomes `BadImage` with an HTTP status and a message for the user.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fedocr.data.preprocess import to_gray

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may carry; documented in the README and in /docs."""

    max_bytes: int = 10 * MiB          # one encoded image
    max_pixels: int = 40_000_000       # width x height of one image (an A4 page at 600 dpi is ~35 M)
    max_side: int = 16_384             # longest side in pixels
    max_files: int = 16                # images in one batch request
    max_batch_bytes: int = 40 * MiB    # a whole batch request

    def body_limit(self, batch: bool) -> int:
        """Request body bytes allowed, multipart framing included."""
        return (self.max_batch_bytes if batch else self.max_bytes) + 64 * 1024


class BadImage(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def configure_pillow(limits: Limits) -> None:
    """Pillow's own bomb guard at our pixel limit, and no silent acceptance of truncated files."""
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_upload(data: bytes, limits: Limits, name: str = "image") -> np.ndarray:
    """Encoded bytes -> uint8 gray array (EXIF rotation applied, alpha composited on white)."""
    if not data:
        raise BadImage(400, f"{name}: empty file")
    if len(data) > limits.max_bytes:
        raise BadImage(413, f"{name}: {len(data)} bytes; the limit is {limits.max_bytes} bytes per image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width < 1 or height < 1:
                    raise BadImage(400, f"{name}: image has no pixels ({width}x{height})")
                if width * height > limits.max_pixels or max(width, height) > limits.max_side:
                    raise BadImage(413, f"{name}: {width}x{height} pixels; the limit is {limits.max_pixels} pixels "
                                        f"and {limits.max_side} per side")
                img.load()
                img = ImageOps.exif_transpose(img)
                if "A" in img.getbands() or "transparency" in img.info:
                    array = np.asarray(img.convert("RGBA"))
                elif img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    array = np.asarray(img)
                else:
                    array = np.asarray(img.convert("L"))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(413, f"{name}: too many pixels; the limit is {limits.max_pixels} pixels "
                            f"and {limits.max_side} per side") from exc
    except UnidentifiedImageError as exc:
        raise BadImage(400, f"{name}: not an image (PNG, JPEG, BMP, TIFF, WebP and GIF are accepted)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise BadImage(400, f"{name}: damaged or truncated image ({str(exc)[:120] or type(exc).__name__})") from exc
    try:
        return to_gray(array)
    except ValueError as exc:
        raise BadImage(400, f"{name}: unsupported image layout ({exc})") from exc
