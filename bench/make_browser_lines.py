"""Build the `browser-lines` evaluation set: real human-written Chinese text, rendered by a
real browser engine (Chromium/Skia), not by fedocr's renderer.

    .venv/bin/python bench/make_browser_lines.py [--n 160]

Text: the Simplified Chinese translations that Debian packages install
(/usr/share/locale/zh_CN/LC_MESSAGES/*.mo: coreutils, apt, git, gtk, ...), i.e. sentences and
UI strings written by people, with the English terms they mix in. Lines are laid out in HTML
with several CSS font families (including LXGW WenKai, which training never sees), sizes and
weights, screenshotted by headless Chromium and cut at their known positions. The result is
committed (bench/data/browser-lines/), so evaluation does not depend on this machine's
locale files; re-running this script rebuilds it deterministically from the same inputs.
"""
from __future__ import annotations

import argparse
import gettext
import glob
import html
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fedocr.charset import default_charset
from fedocr.data import write_line_set

LINE_PX = 64
FAMILIES = ["Noto Sans CJK SC", "Noto Serif CJK SC", "WenQuanYi Zen Hei", "AR PL UKai CN", "AR PL UMing CN",
            "LXGW WenKai"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def real_texts(n: int, seed: int) -> list[str]:
    charset = default_charset()
    found: set[str] = set()
    for path in sorted(glob.glob("/usr/share/locale/zh_CN/LC_MESSAGES/*.mo")):
        try:
            with open(path, "rb") as handle:
                catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
        except (OSError, ValueError):
            continue
        for value in catalog.values():
            if not isinstance(value, str):
                continue
            text = value.split("\n")[0].replace("_", "").replace("&", "").strip()
            if (4 <= len(text) <= 32 and re.search(r"[\u4e00-\u9fff]", text) and not re.search(r"[%$'\"\\{}<>]", text)
                    and all(c in charset for c in text) and "  " not in text):
                found.add(text)
    texts = sorted(found)
    random.Random(seed).shuffle(texts)
    return texts[:n]


def render_page(lines: list[tuple[str, str, int, int]], width: int, workdir: Path) -> np.ndarray:
    rows = "".join(
        f'<div style="top:{i * LINE_PX}px;font-family:\'{family}\';font-size:{size}px;font-weight:{weight}">'
        f"{html.escape(text)}</div>" for i, (text, family, size, weight) in enumerate(lines))
    page = workdir / "page.html"
    page.write_text("<!doctype html><meta charset='utf-8'><style>body{margin:0;background:#fff}"
                    f"div{{position:absolute;left:12px;height:{LINE_PX}px;line-height:{LINE_PX}px;white-space:nowrap;"
                    f"color:#111}}</style>{rows}", encoding="utf-8")
    shot = workdir / "shot.png"
    subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", f"--screenshot={shot}",
                    f"--window-size={width},{LINE_PX * len(lines)}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)


def crop_line(strip: np.ndarray) -> np.ndarray | None:
    ink = np.where(strip < 160)
    if ink[0].size == 0:
        return None
    top, bottom = max(ink[0].min() - 6, 0), min(ink[0].max() + 7, strip.shape[0])
    left, right = max(ink[1].min() - 8, 0), min(ink[1].max() + 9, strip.shape[1])
    return strip[top:bottom, left:right]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data" / "browser-lines")
    args = parser.parse_args()
    if not shutil.which("chromium"):
        sys.exit("chromium is not installed (scripts/setup.sh installs it)")
    texts = real_texts(args.n, args.seed)
    rng = random.Random(args.seed)
    specs = [(t, FAMILIES[i % len(FAMILIES)], rng.choice([20, 24, 28, 32, 36]), rng.choice([400, 400, 700]))
             for i, t in enumerate(texts)]
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, len(specs), 40):
            chunk = specs[start: start + 40]
            shot = render_page(chunk, 1400, Path(tmp))
            for i, (text, *_rest) in enumerate(chunk):
                line = crop_line(shot[i * LINE_PX:(i + 1) * LINE_PX])
                if line is not None:
                    samples.append((line, text))
    if args.out.exists():
        shutil.rmtree(args.out)
    write_line_set(args.out, samples)
    (args.out / "SOURCE.md").write_text(
        "Text: Simplified Chinese message translations shipped by Debian packages (zh_CN .mo files; each under its\n"
        "package's licence). Rendered by headless Chromium with CSS font families " + ", ".join(FAMILIES) + ".\n"
        "Made by bench/make_browser_lines.py.\n", encoding="utf-8")
    print(f"wrote {len(samples)} lines to {args.out}")


if __name__ == "__main__":
    main()
