"""Build `office-lines`: real text set as an office document, printed to PDF by LibreOffice and
rasterised by poppler, the path a printed or scanned office document takes (no Chromium, no
fedocr renderer anywhere).

    apt-get install -y --no-install-recommends libreoffice-writer-nogui poppler-utils  # generator only
    .venv/bin/python bench/make_office_lines.py [--n 320]

Text: the same kinds of real text as browser-lines-wide (see bench/_lines.py: Chinese UI strings
from zh_CN `.mo` translations and the AR PL licence's Chinese prose, English UI strings and
README/NEWS/man-page prose, mixed lines with paths, URLs, e-mail addresses and versions), drawn
with another seed and without texts of the browser sets.
Pipeline: one flat ODF text document (FODT) per raster setting; each line is its own paragraph,
in a Western face for Latin runs and a CJK face for hanzi (LibreOffice's own font switching
within a line), 7.5-22 pt, some bold, some italic, some underlined, some inside a bordered
one-cell table (so rules run above, below and left of the text); `soffice --headless
--convert-to pdf`; `pdftotext -bbox-layout` gives each line's box, matched to its paragraph by
text (lines LibreOffice wrapped or pdftotext split are dropped); `pdftoppm -gray` rasterises at
150, 200, 240 or 300 dpi, three of the seven raster settings (about 45% of the lines) without
anti-aliasing, as bilevel scans and fax-like prints look.
Crops get uneven margins around the box. Degradation: 35% of the lines (fixed seed), chosen at
random, get a mild Gaussian blur (sigma 0.4-0.9 px) then JPEG (quality 45-80); meta.tsv says
which, with each line's faces, size, style, dpi and anti-aliasing.
CJK faces include Noto Sans CJK SC Thin..Black and Noto Serif CJK SC ExtraLight..Black (named
by their weight families), WenQuanYi, AR PL UMing/UKai and LXGW WenKai; Western faces are
bench/_lines.py's LATIN_FACES. The set is committed (bench/data/office-lines/); re-running
rebuilds it deterministically from the same packages and fonts.
"""
from __future__ import annotations

import argparse
import glob
import random
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA  # noqa: E402
from _lines import (LATIN_FACES, compact_pngs, crop_with_margin, degrade, ems, harvest, has_hanzi,  # noqa: E402
                    write_meta)

from fedocr.data import open_dataset, write_line_set  # noqa: E402

CJK_FACES = ("Noto Sans CJK SC", "Noto Sans CJK SC Thin", "Noto Sans CJK SC Light", "Noto Sans CJK SC DemiLight",
             "Noto Sans CJK SC Medium", "Noto Sans CJK SC Black", "Noto Serif CJK SC", "Noto Serif CJK SC ExtraLight",
             "Noto Serif CJK SC Light", "Noto Serif CJK SC SemiBold", "Noto Serif CJK SC Black", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "AR PL UMing CN", "AR PL UKai CN", "LXGW WenKai")
SIZES_PT = (7.5, 8, 9, 10, 10.5, 11, 12, 14, 16, 18, 22)
# (dpi, anti-aliasing) of the rasters; one document each
RASTERS = ((150, True), (200, True), (240, True), (300, True), (150, False), (200, False), (300, False))
OFFICE_MIX = {"zh_ui": 105, "zh_prose": 25, "mixed": 65, "en_ui": 45, "en_prose": 80}
PAGE_CM, MARGIN_CM = (42.0, 29.7), 1.5
DEGRADED_SHARE = 0.35

NS = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
      'xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" '
      'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
      'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
      'xmlns:fo="urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0" '
      'xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0"')


@dataclass(frozen=True)
class OfficeLine:
    text: str
    kind: str
    western: str
    asian: str
    size_pt: float
    bold: bool
    italic: bool
    underline: bool
    in_table: bool
    raster: int      # index into RASTERS
    degraded: bool


def line_specs(n: int, seed: int) -> list[OfficeLine]:
    scale = n / sum(OFFICE_MIX.values())
    mix = {kind: round(count * scale) for kind, count in OFFICE_MIX.items()}
    taken: set[str] = set()
    for name in ("browser-lines", "browser-lines-wide"):
        if (DATA / name / "labels.tsv").is_file():
            taken.update(open_dataset(DATA / name).texts())
    return office_specs(harvest(seed=seed).sample(mix, seed, exclude=taken), random.Random(seed))


def office_specs(texts: list[tuple[str, str]], rng: random.Random, western_faces: Sequence[str] = LATIN_FACES,
                 cjk_faces: Sequence[str] = CJK_FACES) -> list[OfficeLine]:
    """How each (kind, text) is set: faces, size, style, table border, raster and degradation."""
    specs = []
    for kind, text in texts:
        asian = rng.choice(cjk_faces)
        # bold on top of a named Black/SemiBold face would be synthesised twice: only on regular faces
        bold = rng.random() < 0.25 and not asian.endswith(("Black", "SemiBold", "Thin", "ExtraLight", "Light"))
        specs.append(OfficeLine(text, kind, rng.choice(western_faces), asian, rng.choice(SIZES_PT), bold,
                                rng.random() < 0.08 and not has_hanzi(text), rng.random() < 0.12, rng.random() < 0.15,
                                rng.randrange(len(RASTERS)), rng.random() < DEGRADED_SHARE))
    return specs


def _estimated_width_cm(spec: OfficeLine) -> float:
    return ems(spec.text) * spec.size_pt * 2.54 / 72


def fodt(lines: list[OfficeLine]) -> str:
    """A flat ODF document with one paragraph (or one bordered one-cell table) per line."""
    faces = sorted({s.western for s in lines} | {s.asian for s in lines})
    face_decls = "".join(f'<style:font-face style:name={quoteattr(f)} svg:font-family={quoteattr(repr(f))}/>'
                         for f in faces)
    styles, body = [], []
    for i, s in enumerate(lines):
        weight = "bold" if s.bold else "normal"
        posture = "italic" if s.italic else "normal"
        underline = ' style:text-underline-style="solid" style:text-underline-width="auto" ' \
                    'style:text-underline-color="font-color"' if s.underline else ""
        styles.append(
            f'<style:style style:name="P{i}" style:family="paragraph"><style:paragraph-properties '
            f'fo:margin-top="0cm" fo:margin-bottom="{0.05 if s.in_table else 0.45}cm"/>'
            f'<style:text-properties style:font-name={quoteattr(s.western)} style:font-name-asian={quoteattr(s.asian)} '
            f'fo:font-size="{s.size_pt}pt" style:font-size-asian="{s.size_pt}pt" fo:font-weight="{weight}" '
            f'style:font-weight-asian="{weight}" fo:font-style="{posture}" style:font-style-asian="{posture}"'
            f'{underline}/></style:style>')
        paragraph = f'<text:p text:style-name="P{i}">{escape(s.text)}</text:p>'
        if s.in_table:
            width = min(_estimated_width_cm(s) * 1.25 + 0.8, PAGE_CM[0] - 2 * MARGIN_CM)
            styles.append(f'<style:style style:name="T{i}" style:family="table"><style:table-properties '
                          f'style:width="{width:.2f}cm" table:align="left" fo:margin-bottom="0.45cm"/></style:style>'
                          f'<style:style style:name="C{i}" style:family="table-cell"><style:table-cell-properties '
                          f'fo:border="{0.5 + (i % 3) * 0.25}pt solid #000000" fo:padding="0.05cm"/></style:style>')
            body.append(f'<table:table table:name="Table{i}" table:style-name="T{i}"><table:table-column/>'
                        f'<table:table-row><table:table-cell table:style-name="C{i}" office:value-type="string">'
                        f'{paragraph}</table:table-cell></table:table-row></table:table>')
        else:
            body.append(paragraph)
    page = (f'<style:page-layout style:name="pm1"><style:page-layout-properties fo:page-width="{PAGE_CM[0]}cm" '
            f'fo:page-height="{PAGE_CM[1]}cm" fo:margin-top="{MARGIN_CM}cm" fo:margin-bottom="{MARGIN_CM}cm" '
            f'fo:margin-left="{MARGIN_CM}cm" fo:margin-right="{MARGIN_CM}cm"/></style:page-layout>')
    return (f'<?xml version="1.0" encoding="UTF-8"?><office:document {NS} office:version="1.3" '
            f'office:mimetype="application/vnd.oasis.opendocument.text"><office:font-face-decls>{face_decls}'
            f'</office:font-face-decls><office:automatic-styles>{page}{"".join(styles)}</office:automatic-styles>'
            f'<office:master-styles><style:master-page style:name="Standard" style:page-layout-name="pm1"/>'
            f'</office:master-styles><office:body><office:text>{"".join(body)}</office:text></office:body>'
            f'</office:document>')


def _key(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


def line_boxes(pdf: Path) -> list[tuple[int, str, tuple[float, float, float, float]]]:
    """(page, text, (xMin, yMin, xMax, yMax) in points) of every text line pdftotext finds."""
    xhtml = subprocess.run(["pdftotext", "-bbox-layout", str(pdf), "-"], check=True, capture_output=True,
                           text=True).stdout
    boxes = []
    for page_no, page in enumerate(ET.fromstring(xhtml).iterfind(".//{*}page")):
        for line in page.iterfind(".//{*}line"):
            words = " ".join(w.text or "" for w in line.iterfind("{*}word"))
            boxes.append((page_no, words, tuple(float(line.get(k, 0)) for k in ("xMin", "yMin", "xMax", "yMax"))))
    return boxes  # type: ignore[return-value]


def rasterise(pdf: Path, dpi: int, antialias: bool, prefix: Path) -> list[np.ndarray]:
    aa = [] if antialias else ["-aa", "no", "-aaVector", "no"]
    subprocess.run(["pdftoppm", "-gray", "-r", str(dpi), *aa, str(pdf), str(prefix)], check=True, capture_output=True)
    return [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in sorted(glob.glob(f"{prefix}-*.pgm"))]


def cut_document(lines: list[OfficeLine], pdf: Path, dpi: int, antialias: bool, workdir: Path,
                 rng: random.Random) -> list[tuple[OfficeLine, np.ndarray, str]]:
    """Each line's crop from the rasterised PDF, found by its text; (line, image, degradation)."""
    pages = rasterise(pdf, dpi, antialias, workdir / "page")
    boxes = line_boxes(pdf)
    used: set[int] = set()
    out = []
    for spec in lines:
        key = _key(spec.text)
        match = next((j for j, (_, text, _) in enumerate(boxes) if j not in used and _key(text) == key), None)
        if match is None:
            continue  # wrapped or split by LibreOffice/pdftotext: its box would not be one line
        used.add(match)
        page_no, _, (x0, y0, x1, y1) = boxes[match]
        scale = dpi / 72
        box = (int(y0 * scale), int(np.ceil(y1 * scale)), int(x0 * scale), int(np.ceil(x1 * scale)))
        height = box[1] - box[0]
        image = crop_with_margin(pages[page_no], box, pad_y=max(2, round(height * rng.uniform(0.12, 0.35))),
                                 pad_x=max(3, round(height * rng.uniform(0.2, 0.6))))
        how = "none"
        if spec.degraded:
            image, how = degrade(image, rng)
        out.append((spec, image, how))
    return out


def require_tools() -> None:
    for tool in ("soffice", "pdftotext", "pdftoppm"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install -y --no-install-recommends "
                     "libreoffice-writer-nogui poppler-utils")


def draw_office(specs: list[OfficeLine], seed: int) -> dict[int, tuple[np.ndarray, str]]:
    """Index of each spec found as one line -> (its crop, the degradation applied)."""
    rng = random.Random(seed)
    drawn: dict[int, tuple[np.ndarray, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        groups = {r: [i for i, s in enumerate(specs) if s.raster == r] for r in range(len(RASTERS))}
        sources = []
        for r, indices in groups.items():
            path = work / f"doc{r}.fodt"
            path.write_text(fodt([specs[i] for i in indices]), encoding="utf-8")
            sources.append(str(path))
        subprocess.run(["soffice", "--headless", f"-env:UserInstallation={(work / 'profile').as_uri()}",
                        "--convert-to", "pdf", "--outdir", str(work), *sources],
                       check=True, capture_output=True, timeout=600)
        for r, indices in groups.items():
            dpi, antialias = RASTERS[r]
            pages_dir = work / f"r{r}"
            pages_dir.mkdir()
            cut = cut_document([specs[i] for i in indices], work / f"doc{r}.pdf", dpi, antialias, pages_dir, rng)
            by_text = {spec.text: (image, how) for spec, image, how in cut}
            drawn.update({i: by_text[specs[i].text] for i in indices if specs[i].text in by_text})
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=320)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--out", type=Path, default=DATA / "office-lines")
    args = parser.parse_args()
    require_tools()
    specs = line_specs(args.n, args.seed)
    drawn = draw_office(specs, args.seed + 1)
    kept = [i for i in range(len(specs)) if i in drawn]
    if args.out.exists():
        shutil.rmtree(args.out)
    write_line_set(args.out, [(drawn[i][0], specs[i].text) for i in kept])
    compact_pngs(args.out)
    write_meta(args.out, ["image", "kind", "western_face", "cjk_face", "size_pt", "bold", "italic", "underline",
                          "table", "dpi", "antialias", "degradation"],
               [[f"images/{j:06d}.png", s.kind, s.western, s.asian, s.size_pt, int(s.bold), int(s.italic),
                 int(s.underline), int(s.in_table), *RASTERS[s.raster], drawn[i][1]]
                for j, (i, s) in enumerate((i, specs[i]) for i in kept)])
    print(f"wrote {len(kept)} of {len(specs)} lines to {args.out} ({len(specs) - len(kept)} not found as one line)")


if __name__ == "__main__":
    main()
