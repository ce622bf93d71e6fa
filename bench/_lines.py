"""Shared by the external check-set generators (make_browser_lines.py, make_office_lines.py):
real text harvested from this machine's Debian files, and cutting / scaling / degrading crops.

Text sources (all written by people, none drawn from our own text generator):
- zh_CN message catalogues (/usr/share/locale/zh_CN/LC_MESSAGES/*.mo): their translations give
  Chinese UI strings (often mixed with English terms), their msgids English UI strings;
- the Chinese text of the AR PL font licence (/usr/share/doc/fonts-arphic-*/license/zh_CN*), the
  only Chinese prose under /usr/share/doc here;
- English prose from /usr/share/doc/*/README* and NEWS files and from a fixed list of man pages
  (`man -P cat`), cut into line-length pieces at word boundaries; pieces with e-mail addresses,
  paths, URLs or version numbers form the "mixed" pool.
Debian's fortune packages (fortunes-zh and the like) are never read: they are kept for evaluation.
Every label is normalised with the vocabulary (`Charset.normalise`) and a line with any character
outside it is skipped, so the images show exactly what the label says.
"""
from __future__ import annotations

import gettext
import glob
import gzip
import os
import random
import re
import subprocess
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fedocr.charset import Charset, default_charset

ZH_MO = "/usr/share/locale/zh_CN/LC_MESSAGES/*.mo"
DOC_ROOT = Path("/usr/share/doc")
ZH_DOCS = ("/usr/share/doc/fonts-arphic-uming/license/zh_CN.utf-8/*.gz",)
# Common tools' manuals: long, plain English prose with options, paths and versions in it.
MAN_PAGES = ("ls", "cp", "tar", "grep", "sed", "find", "git", "apt-get", "dpkg", "bash", "wget", "make", "gzip",
             "xz", "rsync", "ssh", "chromium", "man", "less", "date", "sort", "diff", "gpg", "psql", "python3")
FORMAT_CHARS = re.compile(r"[%$\\{}<>|`]|\s{2,}")
HANZI = re.compile(r"[\u4e00-\u9fff]")
MIXED = re.compile(r"@|https?:|/\w|\b\d+\.\d+|\b[A-Z]{2,}\d|\w+\.(?:txt|gz|conf|py|md|deb|html)\b")
# Western faces for Latin text: the URW base35 metric clones (Times, Helvetica, Courier, Palatino,
# Century Schoolbook, Bookman), the Calibri/Cambria clones and the common free families.
LATIN_FACES = ("Nimbus Roman", "Nimbus Sans", "Nimbus Mono PS", "C059", "P052", "URW Bookman", "Carlito", "Caladea",
               "Noto Sans", "Noto Serif", "DejaVu Sans", "DejaVu Serif", "Liberation Sans", "Liberation Serif",
               "Liberation Mono", "FreeSans", "FreeSerif")
# Typographic forms that man/groff and docs use but the vocabulary writes plainly.
TYPOGRAPHIC = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2212": "-", "\u00a0": " ",
                             "\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


@dataclass(frozen=True)
class TextPools:
    """Candidate lines by kind; each list sorted, unique, vocabulary-clean."""

    zh_ui: list[str]
    zh_prose: list[str]
    en_ui: list[str]
    en_prose: list[str]
    mixed: list[str]

    def sample(self, mix: dict[str, int], seed: int, exclude: Iterable[str] = ()) -> list[tuple[str, str]]:
        """`mix[kind]` lines of each kind, as (kind, text), shuffled with `seed`; no text twice."""
        rng, used, out = random.Random(seed), set(exclude), []
        for kind, count in mix.items():
            pool = [t for t in getattr(self, kind) if t not in used]
            rng.shuffle(pool)
            picked = pool[:count]
            used.update(picked)
            out += [(kind, t) for t in picked]
        rng.shuffle(out)
        return out


def has_hanzi(text: str) -> bool:
    return HANZI.search(text) is not None


def ems(text: str) -> float:
    """A line's width in ems, roughly: full-width characters 1, the rest 0.62 (for sizing a line
    to its page before a renderer sets it)."""
    return sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.62 for c in text)


def clean_label(text: str, charset: Charset) -> str | None:
    """The label for `text` (vocabulary forms, single spaces), or None when it has characters
    the vocabulary lacks or looks like markup/format strings rather than readable text."""
    text = " ".join(text.translate(TYPOGRAPHIC).split())
    if not text or FORMAT_CHARS.search(text) or charset.encode(text).unknown:
        return None
    return charset.normalise(text)


def _catalogues() -> Iterator[tuple[str, str]]:
    for path in sorted(glob.glob(ZH_MO)):
        try:
            with open(path, "rb") as handle:
                catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
        except (OSError, ValueError):
            continue
        for key, value in catalog.items():
            if isinstance(value, str):  # plural forms are keyed (msgid, n)
                yield key if isinstance(key, str) else key[0], value


def _ui_text(text: str) -> str:
    # first line only; drop GTK/Qt mnemonic markers ("_Open", "&File")
    return text.split("\n")[0].replace("_", "").replace("&", "").strip()


def chinese_ui_strings(charset: Charset) -> list[str]:
    """zh_CN translations, 4-32 characters, with at least one hanzi (the original browser-lines
    filter: no printf/markup characters, no double spaces, every character in the vocabulary)."""
    found = set()
    for _, value in _catalogues():
        text = _ui_text(value)
        if (4 <= len(text) <= 32 and HANZI.search(text) and not re.search(r"[%$'\"\\{}<>]", text)
                and all(c in charset for c in text) and "  " not in text):
            found.add(text)
    return sorted(found)


def english_ui_strings(charset: Charset) -> list[str]:
    """English msgids of the same catalogues: two words or more, 8-60 characters."""
    found = set()
    for key, _ in _catalogues():
        text = _ui_text(key.split("\x04")[-1])  # drop a msgctxt prefix
        label = clean_label(text, charset)
        if (label and 8 <= len(label) <= 60 and " " in label and re.search(r"[a-z]{3}", label)
                and not HANZI.search(label)):
            found.add(label.rstrip(":"))
    return sorted(found)


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="strict") as handle:  # type: ignore[operator]
            return handle.read(200_000)
    except (OSError, UnicodeDecodeError, EOFError):
        return ""


def _paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs, skipping indented blocks (code, lists of names)."""
    for block in re.split(r"\n\s*\n", text):
        rows = block.split("\n")
        if rows and not rows[0].startswith(("    ", "\t", "#", "*", "-", "=")):
            yield " ".join(r.strip() for r in rows)


def _man_page(name: str) -> str:
    env = {**os.environ, "MANWIDTH": "1000", "MAN_KEEP_FORMATTING": "0", "LC_ALL": "C.UTF-8"}
    try:
        result = subprocess.run(["man", "-P", "cat", name], capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    # every paragraph is one long line at this width; blank lines separate them
    return "\n\n".join(row.strip() for row in result.stdout.splitlines() if row.startswith("       ") and row.strip())


def chunk_words(paragraph: str, rng: random.Random, low: int = 16, high: int = 56) -> Iterator[str]:
    """Cut a paragraph into pieces of `low`-`high` characters at word boundaries (text as a
    narrow column would set it)."""
    words, piece = paragraph.split(), ""
    target = rng.randint(low, high)
    for word in words:
        if piece and len(piece) + 1 + len(word) > target:
            if len(piece) >= low:
                yield piece
            piece, target = word, rng.randint(low, high)
        else:
            piece = f"{piece} {word}" if piece else word
    if len(piece) >= low:
        yield piece


def chunk_hanzi(paragraph: str, rng: random.Random, low: int = 8, high: int = 26) -> Iterator[str]:
    """Cut Chinese prose after punctuation into pieces of `low`-`high` characters."""
    paragraph = "".join(paragraph.split())
    start = 0
    while start < len(paragraph):
        end = min(start + rng.randint(low, high), len(paragraph))
        stop = max((i for i in range(start + low, end) if paragraph[i - 1] in "，。；："), default=end)
        piece = paragraph[start:stop].lstrip("，。；：、")
        if len(piece) >= low:
            yield piece
        start = stop


def english_documents() -> Iterator[str]:
    """README and NEWS texts under /usr/share/doc, then the man pages, in a fixed order."""
    for path in sorted(DOC_ROOT.glob("*/*")):
        if "fortune" in str(path).lower():
            continue
        if path.is_file() and re.match(r"(README|NEWS)(\.\w+)?(\.gz)?$", path.name) and "Debian" not in path.name:
            yield _read_text(path)
    for name in MAN_PAGES:
        yield _man_page(name)


def harvest(charset: Charset | None = None, seed: int = 0) -> TextPools:
    """Every pool, deterministic for this machine's files and `seed` (which only moves the cut
    points of the prose)."""
    charset = charset or default_charset()
    rng = random.Random(seed)
    prose, mixed = set(), set()
    for text in english_documents():
        for paragraph in _paragraphs(text):
            if HANZI.search(paragraph) or len(paragraph) < 40:
                continue
            for piece in chunk_words(paragraph, rng):
                label = clean_label(piece, charset)
                if label and re.search(r"[a-z]{3}", label):
                    (mixed if MIXED.search(label) else prose).add(label)
    zh_prose = set()
    for pattern in ZH_DOCS:
        for path in sorted(glob.glob(pattern)):
            for paragraph in _paragraphs(_read_text(Path(path))):
                for piece in chunk_hanzi(paragraph, rng):
                    label = clean_label(piece, charset)
                    if label and HANZI.search(label):
                        zh_prose.add(label)
    zh_ui = chinese_ui_strings(charset)
    # Chinese UI strings with Latin letters and digits in them are mixed lines too.
    mixed.update(t for t in zh_ui if re.search(r"[A-Za-z]{2}.*\d|\d.*[A-Za-z]{2}|[./@:]\w", t))
    return TextPools(zh_ui=zh_ui, zh_prose=sorted(zh_prose), en_ui=english_ui_strings(charset),
                     en_prose=sorted(prose), mixed=sorted(mixed))


def ink_box(gray: np.ndarray, threshold: int = 200) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the pixels darker than `threshold`; None when blank."""
    rows, cols = np.where(gray < threshold)
    if rows.size == 0:
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def crop_with_margin(gray: np.ndarray, box: tuple[int, int, int, int], pad_y: int, pad_x: int) -> np.ndarray:
    top, bottom, left, right = box
    return gray[max(top - pad_y, 0): bottom + pad_y, max(left - pad_x, 0): right + pad_x].copy()


def rescale(gray: np.ndarray, factor: float, interpolation: int) -> np.ndarray:
    """A crop as a viewer or screenshot tool would show it zoomed by `factor`."""
    h, w = gray.shape
    size = (max(int(round(w * factor)), 1), max(int(round(h * factor)), 1))
    return cv2.resize(gray, size, interpolation=interpolation)


def degrade(gray: np.ndarray, rng: random.Random) -> tuple[np.ndarray, str]:
    """Mild scan degradation: Gaussian blur, then JPEG; returns the image and what was done."""
    sigma, quality = rng.uniform(0.4, 0.9), rng.randint(45, 80)
    blurred = cv2.GaussianBlur(gray, (0, 0), sigma)
    ok, data = cv2.imencode(".jpg", blurred, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE), f"blur{sigma:.2f}+jpeg{quality}"


def compact_pngs(out: Path) -> None:
    """Re-encode a written set's PNGs at the highest zlib level: committed data stays small."""
    for path in sorted((out / "images").glob("*.png")):
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def write_meta(out: Path, header: list[str], rows: list[list[object]]) -> None:
    """meta.tsv next to labels.tsv: how each line was drawn (font, size, scale, ...), row i for
    images/{i:06d}.png, so errors can be grouped by face or size."""
    text = "\t".join(header) + "\n" + "".join("\t".join(str(c) for c in row) + "\n" for row in rows)
    (out / "meta.tsv").write_text(text, encoding="utf-8")
