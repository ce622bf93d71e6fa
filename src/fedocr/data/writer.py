"""Write a labelled line set to disk (images/ + labels.tsv) all at once or not at all."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from fedocr.data.datasets import LABELS_FILE, DatasetError


def write_line_set(out: str | Path, lines: Iterable[tuple[np.ndarray, str]],
                   progress: Callable[[int], None] | None = None) -> int:
    """Write `lines` as out/images/NNNNNN.png + out/labels.tsv; returns the count.

    Everything is written into a hidden sibling folder first and renamed into place at the
    end, so an interrupted or failed run leaves no partial data set. An existing non-empty
    `out` is refused rather than mixed with.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: already exists and is not an empty folder")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise DatasetError(f"{out}: cannot write there ({exc.strerror or exc})") from exc
    try:
        (staging / "images").mkdir()
        rows = []
        for i, (image, text) in enumerate(lines):
            if any(c in text for c in "\t\n\r"):
                raise DatasetError(f"line {i}: a label may not contain a tab or a line break ({text[:40]!r})")
            name = f"images/{i:06d}.png"
            if not cv2.imwrite(str(staging / name), image):
                raise DatasetError(f"{out}: failed to write {name}")
            rows.append(f"{name}\t{text}\n")
            if progress:
                progress(1)
        (staging / LABELS_FILE).write_text("".join(rows), encoding="utf-8")
        if out.exists():
            out.rmdir()
        staging.rename(out)
        return len(rows)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
