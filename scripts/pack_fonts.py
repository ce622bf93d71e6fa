"""Pack the CJK and Western faces (training and held out), cut down to the vocabulary, into a folder.

Use it to train where fontconfig and the Debian font packages are missing (a GPU machine, a
container): copy the folder there and set FEDOCR_FONT_DIR to it. ~3 MB a face instead of ~20.

    .venv/bin/python scripts/pack_fonts.py OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

from fedocr.charset import default_charset
from fedocr.data.fonts import pack_faces


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    for path in pack_faces(Path(sys.argv[1]), default_charset()):
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
