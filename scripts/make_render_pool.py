"""Pre-render a pool of training lines through renderers that are not fedocr's: LibreOffice ->
PDF -> poppler (the office path) and headless Chromium (the web/screenshot path), so training
sees how real engines shape, space, hint and rasterise text, not only our own renderer.

    apt-get install -y --no-install-recommends libreoffice-writer-nogui poppler-utils chromium
    .venv/bin/python scripts/make_render_pool.py --out data/render-pool --n 24000 --seed 1
    fedocr train --data synth:pretrain:40000:1,...,data/render-pool ...

Texts come from our own training corpora (the `pretrain`, `wide` and `ui` presets' text, the
same texts the synthetic lines use), never from the sources of the external check sets, and any
text that is in a check set is skipped. Each line is set the way bench/make_office_lines.py and
bench/make_browser_lines.py set theirs (their faces but the families data.fonts keeps out of
training, weights, sizes, tables, dpi, anti-aliasing, device scale factors, zoom, blur + JPEG),
with another seed; a size the line would not fit at
is lowered to the largest that fits (a text too long for every size is not set), a screenshot
whose ink reaches the window's edge is dropped, and LibreOffice lines that wrapped are dropped,
so every label is exactly what its image shows. A new `--seed` draws a fresh pool (refresh it
from time to time). A batch a renderer fails on is tried once more, then skipped and counted.
The pool is a plain line set (images/ + labels.tsv + meta.tsv: renderer, corpus, faces, size,
style, setting = dpi and anti-aliasing or device scale factor, treatment = blur + JPEG or zoom),
written all at once or not at all; it is not committed (data/ is ignored).
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import make_browser_lines as browser  # noqa: E402
import make_office_lines as office  # noqa: E402
from _common import external_set_dirs  # noqa: E402
from _lines import compact_pngs, ems, write_meta  # noqa: E402

from fedocr.data import DatasetError, SyntheticLines, open_dataset, write_line_set  # noqa: E402
from fedocr.data.fonts import HELD_OUT_FAMILIES, HELD_OUT_WIDE_LATIN_FAMILIES  # noqa: E402

PRESETS = ("pretrain", "wide", "ui")
# the check sets draw with every face; training never sees the families kept out for checking
HELD_OUT = set(HELD_OUT_FAMILIES) | set(HELD_OUT_WIDE_LATIN_FAMILIES)
OFFICE_WESTERN = [f for f in office.LATIN_FACES if f not in HELD_OUT]
OFFICE_CJK = [f for f in office.CJK_FACES if f not in HELD_OUT]
BROWSER_LATIN = [f for f in browser.LATIN_FACES if f not in HELD_OUT]
BROWSER_CJK = [(f, weights) for f, weights in browser.CJK_FACES if f not in HELD_OUT]
RENDERERS = ("office", "browser")
TEXTS_PER_BATCH = 1000  # one LibreOffice conversion / a progress line; a failed batch loses no more
OFFICE_WIDTH_PT = (office.PAGE_CM[0] - 2 * office.MARGIN_CM) / 2.54 * 72 * 0.85
BROWSER_WIDTH_PX = (browser.PAGE_WIDTH - 24) * 0.85


def training_texts(n: int, seed: int) -> list[tuple[str, str]]:
    """(preset, text) pairs, the presets in turn, each text once, none of the external check sets'."""
    seen = {t for d in external_set_dirs() for t in open_dataset(d).texts()}
    corpora = [SyntheticLines(p, 10 * n, seed=seed) for p in PRESETS]
    texts, i = [], 0
    while len(texts) < n and i < 10 * n * len(corpora):
        corpus = corpora[i % len(corpora)]
        text = corpus.text(i // len(corpora))
        if text not in seen:
            seen.add(text)
            texts.append((corpus.preset.name, text))
        i += 1
    return texts


def fit_office(spec: office.OfficeLine) -> office.OfficeLine | None:
    """The spec at the largest size up to its own that fits the page; None if none does."""
    sizes = [s for s in office.SIZES_PT if s <= spec.size_pt and ems(spec.text) * s <= OFFICE_WIDTH_PT]
    return dataclasses.replace(spec, size_pt=sizes[-1]) if sizes else None


def fit_browser(spec: browser.LineSpec) -> browser.LineSpec | None:
    """As fit_office; a lowered line is kept as captured (its zoom was chosen for the larger size)."""
    sizes = [s for s in browser.SIZES if s <= spec.size and ems(spec.text) * s <= BROWSER_WIDTH_PX]
    if not sizes:
        return None
    if sizes[-1] == spec.size:
        return spec
    return dataclasses.replace(spec, size=sizes[-1], zoom=1.0, interpolation="linear")


Drawn = list[tuple[np.ndarray, str, list[object]]]


def _draw_office(texts: list[tuple[str, str]], rng: random.Random) -> Drawn:
    specs = office.office_specs(texts, rng, OFFICE_WESTERN, OFFICE_CJK)
    specs = [s for s in map(fit_office, specs) if s is not None]
    out: Drawn = []
    for i, (image, how) in sorted(office.draw_office(specs, rng.randrange(2**31)).items()):
        s = specs[i]
        dpi, antialias = office.RASTERS[s.raster]
        flags = (("b", s.bold), ("i", s.italic), ("u", s.underline), ("t", s.in_table))
        style = "".join(flag for flag, on in flags if on)
        out.append((image, s.text, ["office", s.kind, f"{s.western}|{s.asian}", f"{s.size_pt}pt", style or "-",
                                    f"dpi{dpi}" + ("" if antialias else "-bilevel"), how]))
    return out


def _draw_browser(texts: list[tuple[str, str]], rng: random.Random) -> Drawn:
    specs = browser.browser_specs(texts, rng, BROWSER_LATIN, BROWSER_CJK)
    specs = [s for s in map(fit_browser, specs) if s is not None]
    out: Drawn = []
    for i, image in sorted(browser.draw_browser(specs, rng.randrange(2**31)).items()):
        s = specs[i]
        out.append((image, s.text, ["browser", s.kind, "|".join(s.families), f"{s.size}px",
                                    f"w{s.weight}" + ("i" if s.italic else ""), f"x{s.scale:g}",
                                    f"zoom{s.zoom:g}-{s.interpolation}"]))
    return out


def draw(renderer: str, texts: list[tuple[str, str]], seed: int) -> tuple[Drawn, int]:
    """(image, text, meta row) of every line the renderer drew as one line, and the number of
    texts in batches it failed on twice."""
    drawer = _draw_office if renderer == "office" else _draw_browser
    rng = random.Random(seed)
    out: Drawn = []
    failed = 0
    for start in range(0, len(texts), TEXTS_PER_BATCH):
        batch = texts[start: start + TEXTS_PER_BATCH]
        for attempt in (1, 2):
            try:
                out += drawer(batch, random.Random(rng.randrange(2**31)))
                break
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                print(f"{renderer}: batch at text {start} failed ({type(exc).__name__}: {exc})"
                      + ("; trying again" if attempt == 1 else "; skipped"), file=sys.stderr)
        else:
            failed += len(batch)
        print(f"{renderer}: {start + len(batch)}/{len(texts)} texts set, {len(out)} lines kept", file=sys.stderr)
    return out, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not exist)")
    parser.add_argument("--n", type=int, default=24000, help="texts to set, shared among the renderers")
    parser.add_argument("--seed", type=int, default=1, help="texts and drawing (a new seed, a fresh pool)")
    parser.add_argument("--renderers", default=",".join(RENDERERS), help="comma-separated: office, browser")
    args = parser.parse_args()
    if args.n < 1:
        sys.exit("--n must be at least 1")
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
    lines = [line for part, _ in parts for line in part]
    failed = sum(count for _, count in parts)
    random.Random(args.seed).shuffle(lines)
    # images, labels and meta are all written before the folder takes its name
    staging = args.out.with_name(f".{args.out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_line_set(staging, [(image, text) for image, text, _ in lines])
        compact_pngs(staging)
        write_meta(staging, ["image", "renderer", "corpus", "faces", "size", "style", "setting", "treatment"],
                   [[f"images/{j:06d}.png", *row] for j, (_, _, row) in enumerate(lines)])
        staging.rename(args.out)
    except (DatasetError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        sys.exit(f"cannot write {args.out}: {exc}")
    print(f"wrote {len(lines)} lines to {args.out} ({len(texts) - len(lines)} of {len(texts)} texts not kept: "
          f"{failed} in batches a renderer failed on, the rest wrapped, split, run off the page or blank)")


if __name__ == "__main__":
    main()
