"""Benchmark: page orientation (issue 17 item 6) with the shipped model.

Rendered forms (tests/serve_fixtures.render_page: rows of `digits` lines, two columns, table
rules) turned by 0, 90, 180 and 270 degrees clockwise. For each: the confidence of a plain read
of the turned image (`orient=False`: what the model sees before any correction), the angle
`Engine.ocr` chose, whether its text equals the upright read, and the seconds of both reads
(median over the pages). Writes bench/results/orientation.json.

    .venv/bin/python bench/orientation.py [--pages 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import print_table, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_fixtures import render_page  # noqa: E402

from fedocr.model.shipped import base_checkpoint  # noqa: E402
from fedocr.serve.engine import load_engine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=5)
    args = parser.parse_args()
    engine = load_engine(base_checkpoint())
    rows = {turn: {"plain_confidence": [], "angle": [], "same_text": [], "plain_s": [], "oriented_s": []}
            for turn in (0, 90, 180, 270)}
    for seed in range(args.pages):
        image = render_page(6, seed=seed, charset=engine.charset).image
        upright = engine.ocr(image, orient=False).text
        for turn in rows:
            turned = np.ascontiguousarray(np.rot90(image, -turn // 90))   # the scan, turned clockwise
            t0 = time.perf_counter()
            plain = engine.ocr(turned, orient=False)
            t1 = time.perf_counter()
            read = engine.ocr(turned)
            t2 = time.perf_counter()
            row = rows[turn]
            row["plain_confidence"].append(plain.confidence)
            row["angle"].append(read.angle)
            row["same_text"].append(read.text == upright)
            row["plain_s"].append(t1 - t0)
            row["oriented_s"].append(t2 - t1)
    table = {str(turn): {"plain_confidence_min": min(r["plain_confidence"]), "plain_confidence_max": max(r["plain_confidence"]),
                         "angles_chosen": r["angle"], "same_text_as_upright": sum(r["same_text"]),
                         "pages": args.pages, "median_plain_s": statistics.median(r["plain_s"]),
                         "median_oriented_s": statistics.median(r["oriented_s"])} for turn, r in rows.items()}
    print_table(["turned (clockwise)", "plain confidence", "angle chosen", "same text", "plain s", "oriented s"],
                [[turn, f"{t['plain_confidence_min']:.2f}-{t['plain_confidence_max']:.2f}",
                  ",".join(map(str, sorted(set(t["angles_chosen"])))), f"{t['same_text_as_upright']}/{t['pages']}",
                  f"{t['median_plain_s']:.2f}", f"{t['median_oriented_s']:.2f}"] for turn, t in table.items()])
    checks = {"every_turn_read_upright": all(t["same_text_as_upright"] == t["pages"] for t in table.values()),
              "right_angle_every_page": all(set(table[str(turn)]["angles_chosen"]) == {turn} for turn in rows)}
    path = write_result("orientation", {"pages": args.pages, "table": table, "checks": checks,
                                        "command": " ".join(["bench/orientation.py", *sys.argv[1:]])})
    print(checks)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
