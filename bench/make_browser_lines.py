"""Build the Chromium-rendered check sets: real human-written text drawn by a real browser engine
(Chromium/Skia with HarfBuzz shaping: ligatures, kerning, each face's own Latin), not by fedocr's
renderer.

    .venv/bin/python bench/make_browser_lines.py                       # browser-lines-wide (360 lines)
    .venv/bin/python bench/make_browser_lines.py --set browser-lines   # the original 160 lines

`browser-lines` (160 lines, committed first; tests and the README use it, so it is rebuilt only on
request): Simplified Chinese UI strings from Debian's zh_CN `.mo` translations, six CJK CSS
families, 20-36 px, weight 400/700, screenshot at scale 1.

`browser-lines-wide` (360 lines): Chinese UI strings and licence prose, English UI strings
(the catalogues' msgids) and English prose from /usr/share/doc READMEs/NEWS and man pages, and
mixed lines (paths, URLs, e-mail addresses, version numbers as the docs have them); see
bench/_lines.py for the sources. None of its texts is in `browser-lines`. Faces: CJK families at
several weights (Noto Sans CJK SC Thin..Black, Noto Serif CJK SC ExtraLight..Black, WenQuanYi
Zen/Micro Hei, AR PL UMing/UKai, LXGW WenKai), each usually behind a Western family in the CSS
stack, as web pages set them, and Western families for English (URW base35 clones Nimbus
Roman/Sans/Mono PS, C059, P052, URW Bookman; Carlito, Caladea, Noto Sans/Serif, DejaVu,
Liberation, FreeSans/FreeSerif), some italic. Sizes 11-40 CSS px, device scale factors 1-2, and
then the screenshot crop zoomed as viewers and screenshot tools do (small text up to 3x with
linear, cubic or nearest-neighbour interpolation, large text down to 0.5x). meta.tsv records
each line's font stack, weight, size, scale factor and zoom.

The result is committed (bench/data/), so evaluation does not depend on this machine's files;
re-running rebuilds it deterministically from the same inputs (same Debian packages and fonts).
"""
from __future__ import annotations

import argparse
import html
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA  # noqa: E402
from _lines import (LATIN_FACES, chinese_ui_strings, compact_pngs, crop_with_margin, harvest,  # noqa: E402
                    has_hanzi, ink_box, rescale, write_meta)

from fedocr.charset import default_charset  # noqa: E402
from fedocr.data import open_dataset, write_line_set  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
PAGE_WIDTH = 1800   # CSS px; the longest line (60 monospaced characters at 40 px) fits
CHUNK = 30          # lines per screenshot

ORIGINAL_FAMILIES = ["Noto Sans CJK SC", "Noto Serif CJK SC", "WenQuanYi Zen Hei", "AR PL UKai CN", "AR PL UMing CN",
                     "LXGW WenKai"]
# (family, CSS weights it is drawn at): weights the face lacks are synthesised or mapped by Chromium.
CJK_FACES = [("Noto Sans CJK SC", (100, 300, 400, 500, 700, 900)),
             ("Noto Serif CJK SC", (200, 300, 400, 600, 700, 900)),
             ("WenQuanYi Zen Hei", (400,)), ("WenQuanYi Micro Hei", (400, 700)), ("AR PL UMing CN", (400,)),
             ("AR PL UKai CN", (400,)), ("LXGW WenKai", (300, 400, 700))]
SIZES = (11, 12, 13, 14, 15, 16, 18, 20, 22, 24, 28, 32, 36, 40)
SCALE_FACTORS = (1.0, 1.0, 1.25, 1.5, 2.0)
COLOURS = ("#000", "#111", "#222", "#333", "#444", "#555")
# kinds of text and how many lines of each the wide set draws
WIDE_MIX = {"zh_ui": 120, "zh_prose": 30, "mixed": 70, "en_ui": 50, "en_prose": 90}
INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST,
                  "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class LineSpec:
    text: str
    kind: str
    families: tuple[str, ...]
    size: int            # CSS px
    weight: int
    italic: bool = False
    colour: str = "#111"
    scale: float = 1.0   # device scale factor of the screenshot
    zoom: float = 1.0    # the crop resized afterwards ...
    interpolation: str = "linear"  # ... with this filter


def original_specs(n: int, seed: int) -> list[LineSpec]:
    """The first browser-lines set, exactly as it was drawn."""
    texts = chinese_ui_strings(default_charset())
    random.Random(seed).shuffle(texts)
    rng = random.Random(seed)
    return [LineSpec(t, "zh_ui", (ORIGINAL_FAMILIES[i % len(ORIGINAL_FAMILIES)],), rng.choice([20, 24, 28, 32, 36]),
                     rng.choice([400, 400, 700])) for i, t in enumerate(texts[:n])]


def _zoom(rng: random.Random, pixels: float) -> tuple[float, str]:
    """Small text is often seen enlarged, large text shrunk; most crops stay as captured."""
    if pixels <= 17 and rng.random() < 0.6:
        return rng.choice((1.5, 2.0, 2.5, 3.0)), rng.choice(("linear", "cubic", "nearest"))
    if pixels >= 28 and rng.random() < 0.6:
        return rng.choice((0.5, 0.6, 0.75)), rng.choice(("area", "linear"))
    if rng.random() < 0.2:
        return rng.choice((0.8, 1.25)), rng.choice(("area", "linear", "cubic"))
    return 1.0, "linear"


def wide_specs(n: int, seed: int) -> list[LineSpec]:
    scale = n / sum(WIDE_MIX.values())
    mix = {kind: round(count * scale) for kind, count in WIDE_MIX.items()}
    original = open_dataset(DATA / "browser-lines").texts() if (DATA / "browser-lines").is_dir() else ()
    return browser_specs(harvest(seed=seed).sample(mix, seed, exclude=original), random.Random(seed))


def browser_specs(texts: list[tuple[str, str]], rng: random.Random, latin_faces: Sequence[str] = LATIN_FACES,
                  cjk_faces: Sequence[tuple[str, tuple[int, ...]]] = CJK_FACES) -> list[LineSpec]:
    """How each (kind, text) is drawn: font stack, weight, size, colour, scale factor and zoom."""
    specs = []
    for kind, text in texts:
        latin = rng.choice(latin_faces)
        if has_hanzi(text):
            family, weights = rng.choice(cjk_faces)
            # web pages usually name a Western face first, so Latin runs come from it
            families = (latin, family) if rng.random() < 0.6 else (family,)
            weight, italic = rng.choice(weights), False
        else:
            families, weight, italic = (latin,), rng.choice((300, 400, 400, 400, 700)), rng.random() < 0.1
        size, factor = rng.choice(SIZES), rng.choice(SCALE_FACTORS)
        zoom, interpolation = _zoom(rng, size * factor)
        specs.append(LineSpec(text, kind, families, size, weight, italic, rng.choice(COLOURS), factor, zoom,
                              interpolation))
    return specs


def render_page(lines: list[LineSpec], scale: float, workdir: Path) -> list[np.ndarray]:
    """Screenshot `lines`, one per slot, at device scale factor `scale`; the slot of each line."""
    tops, rows, y = [], [], 8
    for spec in lines:
        slot = 2 * spec.size + 8
        stack = ",".join(f"'{f}'" for f in spec.families)
        rows.append(f'<div style="top:{y}px;height:{slot}px;line-height:{slot}px;font-family:{stack};'
                    f'font-size:{spec.size}px;font-weight:{spec.weight};color:{spec.colour};'
                    f'font-style:{"italic" if spec.italic else "normal"}">{html.escape(spec.text)}</div>')
        tops.append((y, y + slot))
        y += slot
    page = workdir / "page.html"
    page.write_text("<!doctype html><meta charset='utf-8'><style>body{margin:0;background:#fff}"
                    "div{position:absolute;left:12px;white-space:nowrap}</style>" + "".join(rows), encoding="utf-8")
    shot = workdir / "shot.png"
    # Very short windows sometimes come back blank in this headless Chromium; pages are tall.
    subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", f"--screenshot={shot}",
                    f"--force-device-scale-factor={scale}", f"--window-size={PAGE_WIDTH},{max(y + 8, 300)}",
                    page.as_uri()], check=True, capture_output=True, timeout=180)
    image = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    if image is None or image.min() > 200:
        raise RuntimeError("chromium returned a blank screenshot")
    return [image[int(top * scale): int(bottom * scale)] for top, bottom in tops]


def cut(strip: np.ndarray, spec: LineSpec, rng: random.Random) -> np.ndarray | None:
    box = ink_box(strip, threshold=215)
    if box is None or box[3] >= strip.shape[1] - 1:
        return None  # blank, or ink up to the window's edge: the line ran off the page
    height = box[1] - box[0]
    # detectors leave uneven margins; so do we, around the ink
    line = crop_with_margin(strip, box, pad_y=max(2, round(height * rng.uniform(0.1, 0.3))),
                            pad_x=max(3, round(height * rng.uniform(0.15, 0.5))))
    return line if spec.zoom == 1.0 else rescale(line, spec.zoom, INTERPOLATIONS[spec.interpolation])


def draw_browser(specs: list[LineSpec], seed: int, wide: bool = True) -> dict[int, np.ndarray]:
    """Index of each spec whose screenshot had ink -> its crop (the wide set's cut, or the
    original set's fixed margins)."""
    rng = random.Random(seed)
    drawn: dict[int, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in sorted({s.scale for s in specs}):
            indices = [i for i, s in enumerate(specs) if s.scale == scale]
            for start in range(0, len(indices), CHUNK):
                chunk = indices[start: start + CHUNK]
                for i, strip in zip(chunk, render_page([specs[i] for i in chunk], scale, Path(tmp))):
                    line = cut(strip, specs[i], rng) if wide else _original_crop(strip)
                    if line is not None:
                        drawn[i] = line
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("browser-lines-wide", "browser-lines"), default="browser-lines-wide")
    parser.add_argument("--n", type=int, help="lines (default 360 wide, 160 original)")
    parser.add_argument("--seed", type=int, help="default 11 wide, 7 original")
    parser.add_argument("--out", type=Path, help="default bench/data/<set>")
    args = parser.parse_args()
    if not shutil.which("chromium"):
        sys.exit("chromium is not installed (scripts/setup.sh installs it)")
    wide = args.set == "browser-lines-wide"
    n, seed = args.n or (360 if wide else 160), args.seed if args.seed is not None else (11 if wide else 7)
    out = args.out or DATA / args.set
    specs = wide_specs(n, seed) if wide else original_specs(n, seed)
    drawn = draw_browser(specs, seed + 1, wide)
    kept = [i for i in range(len(specs)) if i in drawn]
    if out.exists():
        shutil.rmtree(out)
    write_line_set(out, [(drawn[i], specs[i].text) for i in kept])
    if wide:
        compact_pngs(out)
        write_meta(out, ["image", "kind", "font_stack", "weight", "italic", "size_px", "device_scale", "zoom",
                         "interpolation", "colour"],
                   [[f"images/{j:06d}.png", s.kind, "|".join(s.families), s.weight, int(s.italic), s.size, s.scale,
                     s.zoom, s.interpolation, s.colour] for j, s in enumerate(specs[i] for i in kept)])
    print(f"wrote {len(kept)} lines to {out}")


def _original_crop(strip: np.ndarray) -> np.ndarray | None:
    """browser-lines' fixed margins (6 px above/below, 8 px left/right of the ink)."""
    box = ink_box(strip, threshold=160)
    if box is None:
        return None
    top, bottom, left, right = box
    return strip[max(top - 6, 0): bottom + 6, max(left - 8, 0): right + 8]


if __name__ == "__main__":
    main()
