"""How well the shipped base model reads, and how fast, on every evaluation set.

    .venv/bin/python bench/base_model.py [--model models/base.onnx] [--n 300]

Evaluation sets (none is used for training):
- the test split of each preset (hospital, bank, school, logistics, public), rendered with seeds
  that training never uses;
- `heldout-font`: public-preset text rendered only with LXGW WenKai, a family kept out of training;
- `browser-lines`: real human-written Chinese (Debian's zh_CN translations) rendered by Chromium
  (bench/data/browser-lines, made by bench/make_browser_lines.py);
- length buckets (1-5, 6-20, 21+ characters) over all synthetic sets together.
Prints a table and writes bench/results/base_model.json, including ONNX Runtime batch-1 latency
on a 32x320 line and the targets of the base-model issue.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_seconds, print_table, write_result  # noqa: E402

from fedocr.data import InMemoryLines, LineDataset, SyntheticLines, open_dataset  # noqa: E402
from fedocr.serve.engine import load_engine  # noqa: E402
from fedocr.train import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEST_SEEDS = {"hospital": 10_001, "bank": 10_002, "school": 10_003, "logistics": 10_004, "public": 10_005}
TARGETS = {"public_cer": 0.02, "heldout_font_cer": 0.05, "bucket_vs_overall": 2.0, "ort_b1_ms": 6.0}


def evaluation_sets(n: int) -> list[LineDataset]:
    sets: list[LineDataset] = [SyntheticLines(p, n, seed=s) for p, s in TEST_SEEDS.items()]
    sets.append(SyntheticLines("public", n, seed=10_006, held_out_fonts=True))
    browser = ROOT / "bench" / "data" / "browser-lines"
    if (browser / "labels.tsv").is_file():
        sets.append(open_dataset(browser))
    return [InMemoryLines(s) for s in sets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "base.onnx")
    parser.add_argument("--n", type=int, default=300, help="lines per synthetic set")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    engine = load_engine(args.model, threads=args.threads)

    reports = [evaluate(engine.logits_fn, engine.charset, d) for d in evaluation_sets(args.n)]
    rows = [[r.name, r.n, f"{r.cer:.4f}", f"{r.line_accuracy:.3f}", f"{1000 / r.ms_per_line:.0f}"] for r in reports]
    # Length buckets over every synthetic set together (weighted by characters, like CER itself).
    buckets: dict[str, dict[str, float]] = {}
    for name in ("1-5", "6-20", "21+"):
        parts = [r.by_length[name] for r in reports if name in r.by_length and r.name != "browser-lines"]
        n_lines = sum(p["n"] for p in parts)
        buckets[name] = {"n": n_lines, "cer": float(np.average([p["cer"] for p in parts], weights=[p["n"] for p in parts]))
                         if parts else float("nan")}
        rows.append([f"length {name}", n_lines, f"{buckets[name]['cer']:.4f}", "", ""])

    line = np.zeros((1, 1, 32, 320), np.float32)
    line[0, 0, 8:24, 10:300] = 1.0
    widths = np.array([320], np.int64)
    b1_ms = 1000 * median_seconds(lambda: engine.logits_fn(line, widths), repeats=200, warmup=10)

    synthetic = [r for r in reports if r.name != "browser-lines"]
    overall_cer = float(np.average([r.cer for r in synthetic], weights=[r.n for r in synthetic]))
    by_name = {r.name: r for r in reports}
    checks = {
        "public_cer": by_name["public"].cer <= TARGETS["public_cer"],
        "heldout_font_cer": by_name["public-heldout-font"].cer <= TARGETS["heldout_font_cer"],
        "bucket_vs_overall": all(b["cer"] <= TARGETS["bucket_vs_overall"] * overall_cer for b in buckets.values() if b["n"]),
        "ort_b1_ms": b1_ms <= TARGETS["ort_b1_ms"],
    }
    print(f"model {args.model} ({engine.info.backend}, {engine.info.quantization}); ONNX Runtime threads {args.threads}")
    print_table(["evaluation set", "lines", "CER", "line acc", "lines/s"], rows)
    print(f"synthetic overall CER {overall_cer:.4f}; batch-1 latency on a 32x320 line: {b1_ms:.2f} ms (median of 200)")
    for key, ok in checks.items():
        print(f"target {key} <= {TARGETS[key]}: {'met' if ok else 'NOT met'}")
    path = write_result("base_model", {
        "command": "python bench/base_model.py", "model": str(args.model), "model_info": engine.info.provenance,
        "sets": [r.to_dict() for r in reports], "length_buckets": buckets, "synthetic_overall_cer": overall_cer,
        "ort_b1_ms_32x320": b1_ms, "targets": TARGETS, "targets_met": checks})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
