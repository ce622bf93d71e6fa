"""Training and inference speed of each CRNN size on this machine (PyTorch, CPU).

    .venv/bin/python bench/train_speed.py [--repeats 5] [--threads 2]

Prints a table and writes bench/results/train_speed.json: training lines/s (fp32 and bf16
autocast) on batches of 32 rendered `public` lines, PyTorch inference lines/s at batch 1 and
32 on 32x320 lines, and the renderer's lines/s (it must not be the training bottleneck).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_seconds, print_table, write_result  # noqa: E402

from fedocr.charset import default_charset  # noqa: E402
from fedocr.data import EncodedLines, InMemoryLines, SyntheticLines, collate  # noqa: E402
from fedocr.model import CRNN, ModelConfig  # noqa: E402
from fedocr.model.crnn import SIZES  # noqa: E402


def train_lines_per_s(model: CRNN, batch: dict, repeats: int, bf16: bool) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch["images"], batch["widths"])
        loss = model.ctc_loss(logits, batch["widths"], batch["targets"], batch["target_lengths"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return len(batch["texts"]) / median_seconds(step, repeats)


def infer_lines_per_s(model: CRNN, batch_size: int, repeats: int) -> float:
    model.eval()
    images = torch.rand(batch_size, 1, 32, 320)
    widths = torch.full((batch_size,), 320)
    with torch.inference_mode():
        return batch_size / median_seconds(lambda: model(images, widths), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    charset = default_charset()

    source = SyntheticLines("public", 400, seed=123)
    start = time.perf_counter()
    rendered = InMemoryLines(source)
    render_rate = len(source) / (time.perf_counter() - start)
    encoded = EncodedLines(rendered, charset)
    batch = collate([encoded[i] for i in range(32)])
    mean_width = float(batch["widths"].float().mean())

    rows, results = [], []
    for size in SIZES:
        torch.manual_seed(0)
        model = CRNN(ModelConfig(len(charset), size))
        row = {"size": size, "params_m": model.num_parameters() / 1e6,
               "train_fp32": train_lines_per_s(model, batch, args.repeats, bf16=False),
               "train_bf16": train_lines_per_s(model, batch, args.repeats, bf16=True),
               "infer_b1": infer_lines_per_s(model, 1, args.repeats * 6),
               "infer_b32": infer_lines_per_s(model, 32, args.repeats)}
        results.append(row)
        rows.append([size, f"{row['params_m']:.2f}", row["train_fp32"], row["train_bf16"], row["infer_b1"], row["infer_b32"]])
    print(f"torch threads {args.threads}; training batch: 32 public lines, mean width {mean_width:.0f} px; "
          f"inference: 32x320 lines; renderer {render_rate:.0f} lines/s (one core)")
    print_table(["size", "params (M)", "train fp32 lines/s", "train bf16 lines/s", "infer b1 lines/s", "infer b32 lines/s"], rows)
    path = write_result("train_speed", {"command": "python bench/train_speed.py", "threads": args.threads,
                                        "train_batch_mean_width": mean_width, "render_lines_per_s": render_rate,
                                        "num_classes": len(charset), "sizes": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
