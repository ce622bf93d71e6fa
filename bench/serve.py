"""Serving benchmark: PyTorch vs ONNX Runtime per line, HTTP load on a real `fedocr serve`,
page OCR time, and the server's resident memory over a long run.

    .venv/bin/python bench/serve.py                      # the shipped model (models/base.pt)
    .venv/bin/python bench/serve.py --random --size small --requests 2000

Prints a table and writes bench/results/serve.json. The shipped model by default: what a model
reads changes the work a page costs (a page read with low confidence is also read turned, a
line set off the model's density is read twice), so random weights (`--random`) measure the
network alone. The HTTP server runs with the result cache off, so every request is recognised.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
import torch
from _common import fedocr_server

from fedocr.charset import default_charset
from fedocr.data import SyntheticLines, preprocess
from fedocr.model import CRNN, ModelConfig, recognize_lines, save_checkpoint, torch_logits_fn
from fedocr.model.checkpoint import load_checkpoint
from fedocr.serve.engine import load_engine, onnx_logits_fn
from fedocr.export import INT8_TOLERANCE, Tolerance, export_onnx

RESULTS = Path(__file__).parent / "results" / "serve.json"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "base.pt"


def shown_path(path: Path) -> str:
    """The model's path as results should show it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(SHIPPED.parents[1]))
    except ValueError:
        return str(path)


def lines_per_second(logits_fn, charset, lines, batch_size: int, repeat: int) -> float:
    recognize_lines(lines[:batch_size], logits_fn, charset, batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        recognize_lines(lines, logits_fn, charset, batch_size=batch_size)
    return repeat * len(lines) / (time.perf_counter() - start)


def render_document(seed: int, rows: int = 12) -> np.ndarray:
    """A form-like page: rows of `public` lines, some side by side, with table rules."""
    data = SyntheticLines("public", 2 * rows, seed=seed)
    page = np.full((60 + rows * 120, 1400), 255, np.uint8)
    y = 30
    for r in range(rows):
        x, height = 40, 0
        for c in range(2 if r % 3 == 1 else 1):
            image = data[2 * r + c][0]
            h, w = image.shape
            w = min(w, 600)
            page[y:y + h, x:x + w] = image[:, :w]
            x, height = x + w + 120, max(height, h)
        y += height + 16
        cv2.line(page, (15, y - 8), (1385, y - 8), 60, 2)
    return page[: y + 20]


def http_load(model: Path, images: list[bytes], clients: int, requests: int, warmup: int) -> dict:
    """Start `fedocr serve`, warm it up, measure RSS, run `requests` requests from `clients`
    threads, measure RSS again; stop the server by PID."""
    with fedocr_server("serve", "--model", str(model), "--cache", "0") as (base, proc):
        server = psutil.Process(proc.pid)
        with httpx.Client(base_url=base, timeout=60) as c:
            for i in range(warmup):
                c.post("/api/ocr", files={"image": ("x.png", images[i % len(images)])}).raise_for_status()
        rss_before = server.memory_info().rss
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        trajectory = []

        def worker(counter) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    t = time.perf_counter()
                    try:
                        r = c.post("/api/ocr", files={"image": ("x.png", images[i % len(images)])})
                        reason = None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:120]}"
                    except httpx.HTTPError as exc:
                        reason = f"{type(exc).__name__}: {exc}"
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        if reason:
                            failures.append(f"request {i}: {reason}")

        start = time.perf_counter()
        phase = max(requests // 4, 1)
        for first in range(0, requests, phase):     # RSS after each quarter shows whether it levels off
            counter = iter(range(first, min(first + phase, requests)))
            threads = [threading.Thread(target=worker, args=(counter,)) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            trajectory.append(round(server.memory_info().rss / 2**20, 1))
        wall = time.perf_counter() - start
        rss_after = server.memory_info().rss
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": requests, "failed": len(failures), "failures": failures[:10],
            "requests_per_s": requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "rss_before_mb": rss_before / 2**20, "rss_after_mb": rss_after / 2**20,
            "rss_growth_mb": (rss_after - rss_before) / 2**20, "rss_mb_each_quarter": trajectory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHIPPED, help="checkpoint (.pt); default: the shipped model")
    parser.add_argument("--random", action="store_true", help="a model of --size with random weights instead")
    parser.add_argument("--size", default="small", help="model size for --random (default small)")
    parser.add_argument("--lines", type=int, default=64, help="rendered lines for the per-line measurements")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="HTTP requests (also the memory run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="fedocr-bench-"))
    if not args.random:
        pt = args.model
    else:
        torch.manual_seed(0)
        pt = work / "model.pt"
        charset = default_charset()
        save_checkpoint(pt, CRNN(ModelConfig(len(charset), args.size)), charset, {"kind": "bench-random"})
    ckpt = load_checkpoint(pt)
    charset = ckpt.charset
    data = SyntheticLines("public", args.lines, seed=7, charset=charset)
    raw = [data[i][0] for i in range(args.lines)]
    lines = [preprocess(img) for img in raw]
    verify = lines[:8]
    fp32 = export_onnx(pt, work / "model.onnx", lines=verify).path
    # Random weights give near-uniform outputs whose argmax int8 rounding flips, so the text check
    # means nothing there; the log-prob check still applies.
    loose = Tolerance(max_logprob_diff=INT8_TOLERANCE.max_logprob_diff, min_text_agreement=0.0) if args.random else None
    int8 = export_onnx(pt, work / "model.int8.onnx", int8=True, lines=verify, tolerance=loose).path

    backends = {"pytorch": torch_logits_fn(ckpt.model),
                "onnx-fp32": onnx_logits_fn(fp32, args.threads)[0],
                "onnx-int8": onnx_logits_fn(int8, args.threads)[0]}
    per_line = {name: {f"b{b}": lines_per_second(fn, charset, lines, b, args.repeat) for b in (1, 32)}
                for name, fn in backends.items()}

    engine = load_engine(fp32, args.threads)
    pages = [render_document(seed) for seed in range(args.pages)]
    engine.ocr(pages[0])
    start = time.perf_counter()
    page_lines = sum(len(engine.ocr(p).lines) for p in pages)
    page_s = (time.perf_counter() - start) / len(pages)

    encoded = [cv2.imencode(".png", img)[1].tobytes() for img in raw]
    http = http_load(fp32, encoded, args.clients, args.requests, warmup=200)

    result = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                    "load_avg_1m": os.getloadavg()[0]},
        "model": {"source": f"random {args.size}" if args.random else shown_path(args.model),
                  "params": ckpt.model.num_parameters(), "classes": len(charset)},
        "lines_per_s": per_line,
        "speedup_onnx_vs_pytorch": {b: per_line["onnx-fp32"][b] / per_line["pytorch"][b] for b in ("b1", "b32")},
        "page": {"pages": len(pages), "lines_per_page": page_lines / len(pages), "seconds_per_page": page_s,
                 "size": list(pages[0].shape[::-1])},
        "http": http,
        "targets": {"onnx_at_least_1.3x_pytorch": min(per_line["onnx-fp32"][b] / per_line["pytorch"][b]
                                                       for b in ("b1", "b32")) >= 1.3,
                    "no_failed_request": http["failed"] == 0,
                    "p99_under_4x_p50": http["p99_ms"] < 4 * http["p50_ms"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"model: {result['model']['source']}, {result['model']['params'] / 1e6:.1f} M params, "
          f"{len(charset)} classes; {args.threads} threads; load average {result['machine']['load_avg_1m']:.1f}")
    print(f"{'backend':<12} {'lines/s b1':>11} {'lines/s b32':>12}")
    for name, row in per_line.items():
        print(f"{name:<12} {row['b1']:>11.0f} {row['b32']:>12.0f}")
    s = result["speedup_onnx_vs_pytorch"]
    print(f"ONNX Runtime vs PyTorch: {s['b1']:.2f}x (b1), {s['b32']:.2f}x (b32)")
    print(f"page OCR: {page_s:.2f} s/page ({result['page']['lines_per_page']:.1f} lines, "
          f"{pages[0].shape[1]}x{pages[0].shape[0]} px)")
    print(f"HTTP, {http['clients']} clients, {http['requests']} requests: {http['requests_per_s']:.1f} req/s, "
          f"p50 {http['p50_ms']:.1f} ms, p99 {http['p99_ms']:.1f} ms, failed {http['failed']}")
    print(f"server RSS: {http['rss_before_mb']:.1f} MB after warm-up -> {http['rss_after_mb']:.1f} MB after "
          f"{http['requests']} requests ({http['rss_growth_mb']:+.1f} MB; after each quarter: "
          f"{', '.join(map(str, http['rss_mb_each_quarter']))} MB)")
    print("targets:", ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["targets"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
