"""Pack the CJK and Western faces, cut down to the vocabulary, into a folder.

Use it to train where fontconfig and the Debian font packages are missing (a GPU machine, a
container): copy the folder there and set FEDOCR_FONT_DIR to it. ~3 MB a face instead of ~20.
By default every face (training and held out) is packed; `--wide` packs the training faces of
the wide set that the `wide` and `ui` presets draw with (a training machine needs no held-out
face), and `--leave-out` drops faces by name to fit a transfer limit.

    .venv/bin/python scripts/pack_fonts.py [--wide] [--leave-out "FACE NAME,..."] OUT_DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedocr.charset import default_charset
from fedocr.data.fonts import FontFace, FontsMissing, every_face, pack_faces


def faces_to_pack(wide: bool, leave_out: set[str]) -> tuple[FontFace, ...]:
    """Every face of the default set (held-out ones too), or the wide set's training faces,
    less those named in `leave_out` (each must name a face of the set: a typo fails loudly)."""
    faces = every_face(wide=True, held_out=False) if wide else every_face()
    unknown = leave_out - {face.name for face in faces}
    if unknown:
        raise FontsMissing(f"--leave-out names no packed face: {', '.join(sorted(unknown))}")
    return tuple(face for face in faces if face.name not in leave_out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--wide", action="store_true", help="the wide set's training faces only")
    parser.add_argument("--leave-out", default="", help="comma-separated face names (family and weight) to skip")
    args = parser.parse_args()
    leave_out = {name.strip() for name in args.leave_out.split(",") if name.strip()}
    try:
        written = pack_faces(args.out_dir, default_charset(), faces_to_pack(args.wide, leave_out))
    except FontsMissing as err:
        print(f"pack_fonts: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
