"""Average two checkpoints of the same model into one (a "model soup", Wortsman et al. 2022).

Two fine-tunes from one start sit in the same basin, so their weight average usually keeps what
each learnt: stage 8 (detector-style ink cuts) read tightly cut lines better and lost a little on
full-height ones; its average with stage 7 keeps both. Floating-point tensors are mixed as
(1 - weight) * FIRST + weight * SECOND; integer buffers (BatchNorm's batch count) come from SECOND.
The result holds fp16 weights and no training state (as models/base.pt does), and provenance of
its own that names both parents' provenance (no run id or round: it is no round of either run).

    .venv/bin/python scripts/soup.py FIRST.pt SECOND.pt --weight 0.5 --out soup.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedocr.model import CheckpointError, load_checkpoint, save_checkpoint
from fedocr.model.checkpoint import provenance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--weight", type=float, default=0.5, help="share of SECOND, in [0, 1]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not 0 <= args.weight <= 1:
        parser.error(f"--weight {args.weight:g} is not in [0, 1]")
    try:
        first, second = load_checkpoint(args.first), load_checkpoint(args.second)
    except (CheckpointError, OSError) as err:
        print(f"soup: {err}", file=sys.stderr)
        return 2
    if first.config != second.config or first.charset.version != second.charset.version:
        print("soup: the two checkpoints differ in architecture or vocabulary; only fine-tunes of one "
              "model can be averaged", file=sys.stderr)
        return 2
    a, b = first.model.state_dict(), second.model.state_dict()
    w = args.weight
    first.model.load_state_dict({k: ((1 - w) * a[k].float() + w * b[k].float()).to(a[k].dtype)
                                 if a[k].is_floating_point() else b[k] for k in a})
    made = provenance(kind="soup", weight=w, first={"path": str(args.first), **first.provenance},
                      second={"path": str(args.second), **second.provenance})
    save_checkpoint(args.out, first.model, first.charset, made, half=True)
    print(f"wrote {args.out}: {1 - w:g} x {args.first} + {w:g} x {args.second}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
