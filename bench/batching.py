"""Batches that pay: milliseconds per line when the engine is given 1, 8, 32 or all lines at once,
on real-width lines, with the engine's batching now and as it was before.

    .venv/bin/python bench/batching.py [--model models/base.onnx] [--threads 2] [--rounds 5]

Lines: bench/data/browser-lines (Chromium-rendered, 160) and the lines `fedocr.serve.segment`
cuts from rendered form-like pages (bench/serve.py's `render_document`), shuffled once, so a
"batch of 32" is 32 lines of mixed widths as a page gives them. Each mode hands the engine
chunks of k lines (`Engine.recognize`, preprocessing and decoding included); the modes run in
turn, round after round (A, B, C, A, B, C, ...), and each figure is the median over rounds, so a
machine whose speed drifts moves them all alike.

"before" is the engine's old way: width groups of up to 32 lines whose widest is at most 1.5x
the narrowest, one run at a time, each group decoded as one padded batch
(`fedocr.model.recognize_lines`). Text check: every line's greedy text must be the same in every
mode as alone (plus rendered `public` lines in mixed batches).

Prints a table and writes bench/results/batching.json with `checks`:
batch32_per_line_speedup >= 1.5 (b1 ms/line over b32 ms/line, engine now), b1_ms_32x320 <= 6
(ONNX Runtime alone, one 32x320 line), same_text_in_any_batch.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from _common import RESULTS, print_table, write_result
from fedocr.data import SyntheticLines, preprocess
from fedocr.model import Decoded, pad_lines, recognize_lines
from fedocr.serve.engine import Batching, Engine, load_engine, plan_batches
from fedocr.serve.segment import SegmentConfig, split_lines
from serve import render_document

ROOT = Path(__file__).resolve().parents[1]
BROWSER_LINES = ROOT / "bench" / "data" / "browser-lines"
OLD_BATCHING = Batching(batch_size=32, max_width_ratio=1.5, max_columns=None, workers=1)


def real_lines(pages: int) -> list[np.ndarray]:
    """Browser-rendered lines and the lines segmented from rendered pages, shuffled once."""
    rows = (BROWSER_LINES / "labels.tsv").read_text(encoding="utf-8").splitlines()
    crops = [cv2.imread(str(BROWSER_LINES / row.split("\t")[0]), cv2.IMREAD_GRAYSCALE) for row in rows]
    for seed in range(pages):
        crops += [c.image for c in split_lines(render_document(100 + seed), SegmentConfig(), "page")]
    random.Random(0).shuffle(crops)
    return crops


def before(engine: Engine) -> Callable[[Sequence[np.ndarray]], list[Decoded]]:
    """The engine's recognize() as it was: old grouping, one run at a time, whole-batch decoding."""
    def recognize(crops: Sequence[np.ndarray]) -> list[Decoded]:
        lines = [preprocess(c) for c in crops]
        results: list[Decoded | None] = [None] * len(lines)
        for batch in plan_batches([line.shape[1] for line in lines], OLD_BATCHING):
            decoded = recognize_lines([lines[i] for i in batch], engine.logits_fn, engine.charset, batch_size=32)
            for i, d in zip(batch, decoded):
                results[i] = d
        return [r for r in results if r is not None]
    return recognize


def in_chunks(recognize: Callable[[Sequence[np.ndarray]], list[Decoded]], crops: list[np.ndarray],
              k: int) -> Callable[[], list[str]]:
    return lambda: [d.text for s in range(0, len(crops), k) for d in recognize(crops[s:s + k])]


def interleaved(modes: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each mode, the modes run in turn each round (after one warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in modes}
    for name, fn in modes.items():
        fn()
    for _ in range(rounds):
        for name, fn in modes.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def latency_32x320_ms(engine: Engine, repeats: int = 50) -> float:
    images, widths = pad_lines([np.zeros((32, 320), np.float32)])
    for _ in range(5):
        engine.logits_fn(images, widths)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.logits_fn(images, widths)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "base.onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pages", type=int, default=4, help="rendered pages whose lines join browser-lines")
    parser.add_argument("--no-before", action="store_true", help="skip the old batching")
    args = parser.parse_args()

    engine = load_engine(args.model, threads=args.threads)
    crops = real_lines(args.pages)
    widths = sorted(preprocess(c).shape[1] for c in crops)
    print(f"model {args.model} ({engine.info.quantization}); {len(crops)} lines, preprocessed widths "
          f"{widths[0]}-{widths[-1]} px (median {widths[len(widths) // 2]}); {args.threads} threads")

    sizes = {"b1": 1, "b8": 8, "b32": 32, "all": len(crops)}
    modes = {f"now {k}": in_chunks(engine.recognize, crops, n) for k, n in sizes.items()}
    if not args.no_before:
        modes.update({f"before {k}": in_chunks(before(engine), crops, n) for k, n in sizes.items() if n > 1})

    # Every mode must give every line the text it gets alone; rendered lines add short and long ones.
    public = SyntheticLines("public", 64, seed=5, charset=engine.charset)
    check_crops = crops + [public[i][0] for i in range(len(public))]
    alone = in_chunks(engine.recognize, check_crops, 1)()
    differing = {f"now {k}": sum(a != b for a, b in zip(alone, in_chunks(engine.recognize, check_crops, n)()))
                 for k, n in sizes.items() if n > 1}
    if not args.no_before:
        differing.update({f"before {k}": sum(a != b for a, b in zip(alone, in_chunks(before(engine), check_crops, n)()))
                          for k, n in sizes.items() if n > 1})

    seconds = interleaved(modes, args.rounds)
    ms = {name: s / len(crops) * 1000 for name, s in seconds.items()}
    b1 = ms["now b1"]
    rows = [[name, round(v, 2), round(b1 / v, 2), differing.get(name, 0)] for name, v in ms.items()]
    print_table(["mode", "ms/line", "speedup vs b1", f"lines whose text differs from alone (of {len(check_crops)})"], rows)
    latency = latency_32x320_ms(engine)
    print(f"ONNX Runtime batch-1 latency, one 32x320 line: {latency:.2f} ms")

    checks = {"batch32_per_line_speedup": b1 / ms["now b32"] >= 1.5, "b1_ms_32x320": latency <= 6.0,
              "same_text_in_any_batch": not any(v for k, v in differing.items() if k.startswith("now"))}
    path = write_result("batching", {
        "model": str(args.model.resolve().relative_to(ROOT)) if args.model.resolve().is_relative_to(ROOT) else str(args.model),
        "quantization": engine.info.quantization, "threads": args.threads,
        "batching": asdict(engine.batching),
        "lines": len(crops), "rounds": args.rounds, "ms_per_line": ms,
        "batch32_per_line_speedup": b1 / ms["now b32"], "all_at_once_per_line_speedup": b1 / ms["now all"],
        "b1_ms_32x320": latency, "text_differs_from_alone": differing, "text_check_lines": len(check_crops),
        "checks": checks})
    print("checks:", ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items()))
    print(f"wrote {path.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
