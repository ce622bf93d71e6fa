"""The CJK fonts installed on this machine, what each can draw, and which ones training may use.

Fonts come from Debian packages that scripts/setup.sh installs (fonts-noto-cjk, fonts-wqy-*,
fonts-arphic-*, fonts-lxgw-wenkai). One family, LXGW WenKai, is kept out of training and used
only to measure how the model generalises to a typeface it never saw.

On a machine without fontconfig or those packages (a GPU box, a container), `pack_faces` copies
the faces, cut down to the vocabulary, into a folder with a `fonts.json` manifest; setting
FEDOCR_FONT_DIR to that folder makes it the only source of fonts.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fedocr.charset import Charset

# family name as fontconfig reports it -> style used by presets
TRAIN_FAMILIES: dict[str, str] = {
    "Noto Sans CJK SC": "sans",
    "WenQuanYi Zen Hei": "sans",
    "WenQuanYi Micro Hei": "sans",
    "Noto Serif CJK SC": "serif",
    "AR PL UMing CN": "serif",
    "AR PL SungtiL GB": "serif",
    "AR PL UKai CN": "kai",
    "AR PL KaitiM GB": "kai",
}
HELD_OUT_FAMILIES: dict[str, str] = {"LXGW WenKai": "kai"}
# Documents and browsers draw the ASCII runs of a Chinese line with a Western font: training
# sees these; GNU FreeFont is kept out with LXGW WenKai for the held-out-font set.
LATIN_FAMILIES: dict[str, str] = {"DejaVu Sans": "sans", "DejaVu Serif": "serif", "DejaVu Sans Mono": "mono",
                                  "Liberation Sans": "sans", "Liberation Serif": "serif", "Liberation Mono": "mono"}
HELD_OUT_LATIN_FAMILIES: dict[str, str] = {"FreeSans": "sans", "FreeSerif": "serif"}
# The wide face set (presets with faces="wide", for a base model that reads other documents):
# the CJK weights of fonts-noto-cjk-extra (Thin to Black) and the office and print faces of
# fonts-urw-base35, fonts-crosextra-carlito and fonts-noto-core. P052 (Palatino) and Caladea
# (Cambria) are kept out with FreeFont, to measure unseen Latin typefaces.
CORE_NOTO_WEIGHTS = frozenset({"Regular", "Bold"})
WIDE_LATIN_FAMILIES: dict[str, str] = {
    **LATIN_FAMILIES, "Nimbus Roman": "serif", "Nimbus Sans": "sans", "Nimbus Sans Narrow": "sans",
    "Nimbus Mono PS": "mono", "C059": "serif", "URW Bookman": "serif", "URW Gothic": "sans", "Carlito": "sans",
    "Noto Sans": "sans", "Noto Serif": "serif"}
HELD_OUT_WIDE_LATIN_FAMILIES: dict[str, str] = {**HELD_OUT_LATIN_FAMILIES, "P052": "serif", "Caladea": "serif"}
# FreeType reads Type 1 (.pfb) too, but fontTools cannot tell their coverage; the OpenType
# copies of the same faces are installed beside them.
FONT_SUFFIXES = (".ttf", ".ttc", ".otf")
FONT_DIR_ENV = "FEDOCR_FONT_DIR"
MANIFEST = "fonts.json"


class FontsMissing(RuntimeError):
    """No usable CJK font: scripts/setup.sh installs them."""


@dataclass(frozen=True)
class FontFace:
    path: str
    index: int          # face index inside a .ttc collection
    family: str
    style: str          # sans | serif | kai
    weight: str         # e.g. Regular, Bold, Light

    @property
    def name(self) -> str:
        return f"{self.family} {self.weight}"


def _fc_list(pattern: str = ":lang=zh") -> list[tuple[str, int, str, str]]:
    try:
        out = subprocess.run(["fc-list", "-f", "%{file}|%{index}|%{family[0]}|%{style[0]}\n", pattern],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise FontsMissing(f"cannot list fonts with fc-list ({exc}); run scripts/setup.sh") from exc
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[1].isdigit():
            rows.append((parts[0], int(parts[1]), parts[2], parts[3]))
    return sorted(set(rows))


def _packed(folder: Path) -> list[tuple[str, int, str, str]]:
    try:
        entries = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return [(str(folder / e["file"]), int(e["index"]), e["family"], e["weight"]) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FontsMissing(f"{folder / MANIFEST}: not a font manifest ({exc}); make it with scripts/pack_fonts.py") from exc


def _faces(families: dict[str, str], pattern: str) -> tuple[FontFace, ...]:
    folder = os.environ.get(FONT_DIR_ENV)
    listed = _packed(Path(folder)) if folder else _fc_list(pattern)
    return tuple(FontFace(path, index, family, families[family], style)
                 for path, index, family, style in listed
                 if family in families and path.lower().endswith(FONT_SUFFIXES))


def _is_core(face: FontFace) -> bool:
    """In the face set the shipped base model was first trained on (before fonts-noto-cjk-extra)."""
    return not face.family.startswith("Noto ") or face.weight in CORE_NOTO_WEIGHTS


@cache
def installed_faces(held_out: bool = False, wide: bool = False) -> tuple[FontFace, ...]:
    """Faces of the training families (or, with held_out=True, of the held-out ones); `wide`
    adds every installed weight of the Noto CJK families (fonts-noto-cjk-extra)."""
    families = HELD_OUT_FAMILIES if held_out else TRAIN_FAMILIES
    faces = tuple(f for f in _faces(families, ":lang=zh") if wide or _is_core(f))
    if not faces:
        kind = "held-out" if held_out else "training"
        raise FontsMissing(f"no {kind} CJK fonts found ({', '.join(families)}); run scripts/setup.sh")
    return faces


@cache
def latin_faces(held_out: bool = False, wide: bool = False) -> tuple[FontFace, ...]:
    """Faces of the Western families for ASCII runs (none installed: an empty tuple): upright
    ones, and with `wide` the wide set's, where the serif families keep their italics (as
    printed documents use them: emphasis, titles, Latin names)."""
    if wide:
        families = HELD_OUT_WIDE_LATIN_FAMILIES if held_out else WIDE_LATIN_FAMILIES
        return tuple(f for f in _faces(families, ":lang=en") if f.style == "serif" or not _slanted(f))
    families = HELD_OUT_LATIN_FAMILIES if held_out else LATIN_FAMILIES
    return tuple(f for f in _faces(families, ":lang=en") if not _slanted(f))


def every_face(wide: bool = False, held_out: bool = True) -> tuple[FontFace, ...]:
    """The CJK and Western faces of the default (or the wide) set, the held-out ones too unless
    held_out=False (a training machine needs none of them)."""
    faces = installed_faces(wide=wide) + latin_faces(wide=wide)
    if held_out:
        faces += installed_faces(held_out=True, wide=wide) + latin_faces(held_out=True, wide=wide)
    return faces


def _slanted(face: FontFace) -> bool:
    return any(word in face.weight for word in ("Italic", "Oblique", "Kursiv"))


def _cache_dir() -> Path:
    return Path(os.environ.get("FEDOCR_CACHE", Path.home() / ".cache" / "fedocr"))


_COVERAGE: dict[str, frozenset[str]] = {}   # this process's copy of the disk cache's entries


def coverage(face: FontFace, charset: Charset) -> frozenset[str]:
    """The charset's characters that this face has a glyph for (cached on disk per file, and in
    memory: every SyntheticLines asks for every face, and a privacy audit builds thousands)."""
    stat = os.stat(face.path)
    key = f"{face.path}|{face.index}|{stat.st_size}|{int(stat.st_mtime)}|{charset.version}"
    if key in _COVERAGE:
        return _COVERAGE[key]
    cache_file = _cache_dir() / "font-coverage.json"
    table: dict[str, str] = {}
    if cache_file.is_file():
        try:
            table = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            table = {}
    if key not in table:
        from fontTools.ttLib import TTFont  # slow to import; only needed on a cache miss

        font = TTFont(face.path, fontNumber=face.index, lazy=True)
        cmap = font.getBestCmap() or {}
        table[key] = "".join(c for c in charset.chars if ord(c) in cmap or c == " ")
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only home only costs the re-scan next time
    _COVERAGE[key] = frozenset(table[key])
    return _COVERAGE[key]


def pack_faces(dest: Path, charset: Charset, faces: tuple[FontFace, ...]) -> list[Path]:
    """Copy `faces` (`every_face()`, say) into `dest`, keeping only the glyphs of `charset` (a CJK
    face shrinks from ~20 MB to ~3 MB), with the manifest FEDOCR_FONT_DIR reads."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    options = subset.Options()
    options.name_IDs, options.name_languages, options.notdef_outline = ["*"], ["*"], True
    options.layout_features = ["*"]
    dest.mkdir(parents=True, exist_ok=True)
    manifest, written = [], []
    for face in faces:
        font = TTFont(face.path, fontNumber=face.index)
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=[ord(c) for c in coverage(face, charset)])
        subsetter.subset(font)
        suffix = ".otf" if "CFF " in font else ".ttf"
        name = f"{face.family}-{face.weight}".replace(" ", "") + suffix
        tmp = dest / f".{name}.tmp"  # a half-written font never carries the final name
        font.save(str(tmp))
        os.replace(tmp, dest / name)
        manifest.append({"file": name, "index": 0, "family": face.family, "weight": face.weight})
        written.append(dest / name)
    tmp = dest / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, dest / MANIFEST)
    return written
