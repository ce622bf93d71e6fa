"""Pre-render a pool of training lines through renderers that are not fedocr's: LibreOffice ->
PDF -> poppler (the office path) and headless Chromium (the web/screenshot path), so training
sees how real engines shape, space, hint and rasterise text, not only our own renderer.

    apt-get install -y --no-install-recommends libreoffice-writer-nogui poppler-utils chromium
    .venv/bin/python scripts/make_render_pool.py --out data/render-pool --n 20000 --seed 0
    fedocr train --data synth:pretrain:40000:1,...,data/render-pool ...

Texts come from our own training corpora (the `pretrain`, `wide` and `ui` presets' text, the
same texts the synthetic lines use), never from the sources of the external check sets, and any
text that is in a check set is skipped. Each line is set the way bench/make_office_lines.py and
bench/make_browser_lines.py set theirs (faces, weights, sizes, tables, dpi, anti-aliasing,
device scale factors, zoom, blur + JPEG), with another seed; a size the line would not fit at
is lowered to the largest that fits, so no line wraps or is cut off. A new `--seed` draws a
fresh pool (refresh it from time to time). The pool is a plain line set (images/ + labels.tsv
+ meta.tsv), written all at once or not at all; it is not committed (data/ is ignored).
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import make_browser_lines as browser  # noqa: E402
import make_office_lines as office  # noqa: E402
from _common import external_set_dirs  # noqa: E402
from _lines import write_meta  # noqa: E402

from fedocr.data import SyntheticLines, open_dataset, write_line_set  # noqa: E402

PRESETS = ("pretrain", "wide", "ui")
RENDERERS = ("office", "browser")
CHUNK = 1000  # lines per LibreOffice batch / progress step
OFFICE_WIDTH_PT = (office.PAGE_CM[0] - 2 * office.MARGIN_CM) / 2.54 * 72 * 0.85
BROWSER_WIDTH_PX = (browser.PAGE_WIDTH - 24) * 0.85


def ems(text: str) -> float:
    """The line's width in ems, roughly: full-width characters 1, the rest 0.62."""
    return sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.62 for c in text)


def training_texts(n: int, seed: int) -> list[tuple[str, str]]:
    """(preset, text) pairs, the presets in turn, without any text of the external check sets."""
    checked = {t for d in external_set_dirs() for t in open_dataset(d).texts()}
    corpora = [SyntheticLines(p, 10 * n, seed=seed) for p in PRESETS]
    texts, i = [], 0
    while len(texts) < n:
        corpus = corpora[i % len(corpora)]
        text = corpus.text(i // len(corpora))
        if text not in checked:
            texts.append((corpus.preset.name, text))
        i += 1
    return texts


def fit_office(spec: office.OfficeLine) -> office.OfficeLine:
    sizes = [s for s in office.SIZES_PT if s <= spec.size_pt and ems(spec.text) * s <= OFFICE_WIDTH_PT]
    return dataclasses.replace(spec, size_pt=sizes[-1] if sizes else office.SIZES_PT[0])


def fit_browser(spec: browser.LineSpec) -> browser.LineSpec:
    sizes = [s for s in browser.SIZES if s <= spec.size and ems(spec.text) * s <= BROWSER_WIDTH_PX]
    return dataclasses.replace(spec, size=sizes[-1] if sizes else browser.SIZES[0])


def draw(renderer: str, texts: list[tuple[str, str]], seed: int) -> list[tuple[np.ndarray, str, list[object]]]:
    """(image, text, meta row) of every line the renderer drew as one line."""
    rng = random.Random(seed)
    out: list[tuple[np.ndarray, str, list[object]]] = []
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start: start + CHUNK]
        if renderer == "office":
            specs = [fit_office(s) for s in office.office_specs(chunk, rng)]
            for i, (image, how) in sorted(office.draw_office(specs, rng.randrange(2**31)).items()):
                s = specs[i]
                out.append((image, s.text, [renderer, s.kind, f"{s.western}|{s.asian}", f"{s.size_pt}pt",
                                            f"dpi{office.RASTERS[s.raster][0]}", how]))
        else:
            bspecs = [fit_browser(s) for s in browser.browser_specs(chunk, rng)]
            for i, image in sorted(browser.draw_browser(bspecs, rng.randrange(2**31)).items()):
                b = bspecs[i]
                out.append((image, b.text, [renderer, b.kind, "|".join(b.families), f"{b.size}px",
                                            f"x{b.scale:g}", f"zoom{b.zoom:g}"]))
        print(f"{renderer}: {start + len(chunk)}/{len(texts)} texts set, {len(out)} lines kept", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not exist)")
    parser.add_argument("--n", type=int, default=20000, help="texts to set, shared among the renderers")
    parser.add_argument("--seed", type=int, default=0, help="texts and drawing (a new seed, a fresh pool)")
    parser.add_argument("--renderers", default=",".join(RENDERERS), help="comma-separated: office, browser")
    args = parser.parse_args()
    renderers = [r for r in args.renderers.split(",") if r]
    if not renderers or set(renderers) - set(RENDERERS):
        sys.exit(f"--renderers: choose from {', '.join(RENDERERS)}")
    if args.out.exists():
        sys.exit(f"{args.out} already exists: remove it or choose another --out")
    if "office" in renderers:
        office.require_tools()
    if "browser" in renderers and not shutil.which("chromium"):
        sys.exit("chromium is not installed (scripts/setup.sh installs it)")
    texts = training_texts(args.n, args.seed)
    share = -(-len(texts) // len(renderers))
    # one process per renderer: LibreOffice and Chromium each keep one core busy
    with ProcessPoolExecutor(len(renderers)) as pool:
        parts = list(pool.map(draw, renderers, [texts[k * share:(k + 1) * share] for k in range(len(renderers))],
                              [args.seed * 1000 + k for k in range(len(renderers))]))
    lines = [line for part in parts for line in part]
    random.Random(args.seed).shuffle(lines)
    write_line_set(args.out, [(image, text) for image, text, _ in lines])
    write_meta(args.out, ["image", "renderer", "corpus", "faces", "size", "raster", "treatment"],
               [[f"images/{j:06d}.png", *row] for j, (_, _, row) in enumerate(lines)])
    print(f"wrote {len(lines)} lines to {args.out} ({len(texts) - len(lines)} of {len(texts)} texts not kept: "
          "wrapped, split or blank)")


if __name__ == "__main__":
    main()
