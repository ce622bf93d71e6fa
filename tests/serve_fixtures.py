"""Helpers for the serving tests: tiny models on disk, encoded images, rendered pages, live servers.

Imported by tests/test_export.py, test_serve_*.py, test_segment.py and test_web_page.py.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import torch
from PIL import Image

from fedocr.charset import Charset
from fedocr.data import SyntheticLines
from fedocr.model import CRNN, ModelConfig, save_checkpoint

SMALL = Charset(list("0123456789中国人民银行金额日期医院学校"))


def random_model(path: Path, seed: int = 0, provenance: dict | None = None) -> Path:
    """A randomly initialised tiny CRNN checkpoint (reads nothing, but runs like a real one)."""
    torch.manual_seed(seed)
    model = CRNN(ModelConfig(len(SMALL), "tiny"))
    model.eval()
    save_checkpoint(path, model, SMALL, provenance or {"kind": "test", "seed": seed})
    return path


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with (almost) no pixel data: the cheap
    shape of a decompression bomb, or of a 0-pixel image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def dot_grid(side: int = 1000, step: int = 10, dot: int = 3) -> np.ndarray:
    """White square with a black dot x dot square every `step` px: a few KB of PNG that segments
    into (side / step)^2 "lines" (the hostile upload of issue 17)."""
    image = np.full((side, side), 255, np.uint8)
    for offset in range(dot):
        image[offset::step, :] = np.where((np.arange(side) % step) < dot, 0, image[offset::step, :])
    return image


@dataclass(frozen=True)
class Page:
    image: np.ndarray                          # uint8 gray
    texts: list[list[str]]                     # per row, the segments left to right
    boxes: list[tuple[int, int, int, int]]     # where each line was pasted, reading order


def render_page(n_rows: int = 5, seed: int = 0, charset: Charset = SMALL, two_columns: bool = True,
                rules: bool = True, angle: float = 0.0) -> Page:
    """A rendered form: rows of `digits` lines (the second column in some rows, as in a form's
    `field: value   field: value`), table rules between rows and a frame, optionally rotated."""
    lines = SyntheticLines("digits", 2 * n_rows, seed=seed, charset=charset)
    rng = np.random.default_rng(seed)
    width = 1100
    page = np.full((80 + n_rows * 75, width), 255, np.uint8)
    texts: list[list[str]] = []
    boxes: list[tuple[int, int, int, int]] = []
    y = 40
    for row in range(n_rows):
        row_texts = []
        columns = [0, 1] if two_columns and row % 2 == 1 else [0]
        x = 40 + int(rng.integers(0, 30))
        row_h = 0
        for col in columns:
            image, text = lines[2 * row + col]
            h, w = image.shape
            w = min(w, 480)
            page[y:y + h, x:x + w] = image[:, :w] if w == image.shape[1] else image[:, :w]
            if w < image.shape[1]:
                continue
            row_texts.append(text)
            boxes.append((x, y, x + w, y + h))
            x += w + 150
            row_h = max(row_h, h)
        texts.append(row_texts)
        y += row_h + 20
        if rules:
            cv2.line(page, (10, y - 10), (width - 10, y - 10), 40, 2)
    if rules:
        cv2.rectangle(page, (10, 10), (width - 10, y), 40, 2)
    page = page[: y + 30]
    if angle:
        h, w = page.shape
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        page = cv2.warpAffine(page, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=255)
        boxes = [_rotate_box(b, matrix, w, h) for b in boxes]
    return Page(page, [t for t in texts if t], boxes)


def _rotate_box(box: tuple[int, int, int, int], matrix: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    pts = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]], float) @ matrix.T
    return (max(0, int(pts[:, 0].min())), max(0, int(pts[:, 1].min())), min(w, int(pts[:, 0].max())),
            min(h, int(pts[:, 1].max())))


def iou(a: Sequence[int], b: Sequence[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(model: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 60.0) -> Iterator[str]:
    """`fedocr serve` as a real process on a free loopback port; stopped by PID at exit, even on failure."""
    with live_command(["serve", "--model", str(model), *args], env, timeout) as base:
        yield base


@contextmanager
def live_command(command: list[str], env: dict[str, str] | None = None, timeout: float = 60.0) -> Iterator[str]:
    """A serving `fedocr` command (`serve ...`, `fl dashboard ...`) on a free loopback port, once
    /api/health answers; stopped by PID at exit, even on failure."""
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"fedocr-serve-{port}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "fedocr", *command, "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"fedocr {command[0]} exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                if httpx.get(base + "/api/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fedocr {command[0]} did not become healthy in time")
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def chromium_page(locale: str = "en-US") -> Iterator[Any]:
    """A page in Debian's headless Chromium driven by Playwright (no browser is downloaded);
    the browser is closed at exit, even on failure."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            context = browser.new_context(accept_downloads=True, locale=locale)
            yield context.new_page()
        finally:
            browser.close()


def fixed_lines_small(n: int = 8) -> list[np.ndarray]:
    """A few rendered, preprocessed lines in the small test charset (export verification)."""
    from fedocr.data import preprocess

    data = SyntheticLines("digits", n, seed=99, charset=SMALL)
    return [preprocess(data[i][0]) for i in range(n)]
