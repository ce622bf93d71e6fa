"""The CJK fonts installed on this machine, what each can draw, and which ones training may use.

Fonts come from Debian packages that scripts/setup.sh installs (fonts-noto-cjk, fonts-wqy-*,
fonts-arphic-*, fonts-lxgw-wenkai). One family, LXGW WenKai, is kept out of training and used
only to measure how the model generalises to a typeface it never saw.
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


def _fc_list() -> list[tuple[str, int, str, str]]:
    try:
        out = subprocess.run(["fc-list", "-f", "%{file}|%{index}|%{family[0]}|%{style[0]}\n", ":lang=zh"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise FontsMissing(f"cannot list fonts with fc-list ({exc}); run scripts/setup.sh") from exc
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[1].isdigit():
            rows.append((parts[0], int(parts[1]), parts[2], parts[3]))
    return sorted(set(rows))


@cache
def installed_faces(held_out: bool = False) -> tuple[FontFace, ...]:
    """Faces of the training families (or, with held_out=True, of the held-out ones)."""
    families = HELD_OUT_FAMILIES if held_out else TRAIN_FAMILIES
    faces = tuple(FontFace(path, index, family, families[family], style)
                  for path, index, family, style in _fc_list()
                  if family in families and "Mono" not in family)
    if not faces:
        kind = "held-out" if held_out else "training"
        raise FontsMissing(f"no {kind} CJK fonts found ({', '.join(families)}); run scripts/setup.sh")
    return faces


def _cache_dir() -> Path:
    return Path(os.environ.get("FEDOCR_CACHE", Path.home() / ".cache" / "fedocr"))


def coverage(face: FontFace, charset: Charset) -> frozenset[str]:
    """The charset's characters that this face has a glyph for (cached on disk per file)."""
    stat = os.stat(face.path)
    key = f"{face.path}|{face.index}|{stat.st_size}|{int(stat.st_mtime)}|{charset.version}"
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
    return frozenset(table[key])
