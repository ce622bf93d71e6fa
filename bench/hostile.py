"""Hostile load against a real `fedocr serve` on loopback (issue 17): good line and page uploads
alone, then the same mixed with hostile ones from 16 clients. Prints a table per class and writes
bench/results/hostile.json with a `checks` object.

    .venv/bin/python bench/hostile.py [--requests 10000] [--clients 16]

Hostile classes: the generated corpus of tests/hostile_inputs.py (dot grids, bombs, malformed and
odd files), the wrong form field, 50 MB bodies, bodies that stall (408 after --read-timeout) and
bodies cut short (the client hangs up). Targets: no 5xx of any kind; the good requests' p99 under
the mix at most 3x their p99 alone; server RSS (at rest after each block of 500 requests) grows
under 2% over the last 5,000 (a Theil-Sen line through those samples).
"""
from __future__ import annotations

import argparse
import itertools
import random
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
from _common import fedocr_server, machine, print_table, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from hostile_inputs import hostile_corpus  # noqa: E402
from serve import render_document  # noqa: E402  (bench/serve.py)

from fedocr.data import open_dataset  # noqa: E402

READ_TIMEOUT_S = 2.0
RSS_BLOCK = 500         # requests between RSS samples
RSS_SETTLE_S = 1.5      # after a block: the last answers are out and the server's trim has run
HUGE_BYTES = 50 * 2**20
CLASSES = {   # share of the hostile half of the mix
    "dot-grid": 0.15, "bomb": 0.1, "malformed": 0.15, "odd-format": 0.25, "wrong-field": 0.1,
    "huge-body": 0.05, "slow-body": 0.1, "cut-body": 0.1,
}


def good_inputs() -> list[tuple[str, bytes]]:
    lines = open_dataset(ROOT / "bench" / "data" / "browser-lines")
    good = [("good-line", cv2.imencode(".png", lines[i][0])[1].tobytes()) for i in range(0, 60, 3)]
    return good + [("good-page", cv2.imencode(".png", render_document(seed))[1].tobytes()) for seed in range(3)]


def hostile_files() -> dict[str, list[bytes]]:
    corpus = hostile_corpus()
    groups: dict[str, list[bytes]] = defaultdict(list)
    for name, data in corpus.items():
        kind = ("dot-grid" if name.startswith("dot-grid") else "bomb" if name in ("bomb-header", "over-max-side")
                else "malformed" if name in ("truncated-png", "empty", "random-bytes", "text-file", "zero-pixels")
                else "odd-format")
        groups[kind].append(data)
    return groups


def raw(port: int, head: bytes, body: bytes, stall_s: float) -> str:
    """Send the head and part of a body, then stall (the server should answer 408) or hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S * 5) as s:
        s.sendall(head + body)
        if stall_s <= 0:
            return "hung up"
        try:
            answer = s.recv(64)
        except TimeoutError:
            return "no answer"
        return answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"


def one_request(client: httpx.Client, port: int, kind: str, data: bytes) -> str:
    """Send one request of this class; its outcome: the status code, or what happened."""
    try:
        if kind == "wrong-field":
            return str(client.post("/api/ocr", files={"file": ("x.png", data, "image/png")}).status_code)
        if kind == "huge-body":
            return str(client.post("/api/ocr", files={"image": ("x.png", b"\0" * HUGE_BYTES, "image/png")}).status_code)
        if kind in ("slow-body", "cut-body"):
            head = (b"POST /api/ocr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 100000\r\n\r\n")
            return raw(port, head, b"--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n" + data[:500],
                       stall_s=1.0 if kind == "slow-body" else 0.0)
        return str(client.post("/api/ocr", files={"image": ("x.png", data, "image/png")}).status_code)
    except httpx.HTTPError as exc:   # a refused 50 MB upload may be cut off while still sending
        return f"closed ({type(exc).__name__})"


def load(base: str, port: int, plan: list[tuple[str, bytes]], clients: int) -> list[tuple[str, str, float]]:
    """Run the plan from `clients` threads; (kind, outcome, seconds) per request."""
    counter, lock = itertools.count(), threading.Lock()
    results: list[tuple[str, str, float]] = []

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            while (i := next(counter)) < len(plan):
                kind, data = plan[i]
                started = time.perf_counter()
                outcome = one_request(client, port, kind, data)
                with lock:
                    results.append((kind, outcome, time.perf_counter() - started))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def load_in_blocks(base: str, port: int, plan: list[tuple[str, bytes]], clients: int, server: psutil.Process,
                   block: int) -> tuple[list[tuple[str, str, float]], list[float]]:
    """The plan in blocks of `block` requests; the server's RSS (MiB) after each, once its work is
    done: what it kept, not what the requests in flight happened to hold at that moment."""
    results: list[tuple[str, str, float]] = []
    rss: list[float] = []
    for start in range(0, len(plan), block):
        results += load(base, port, plan[start:start + block], clients)
        time.sleep(RSS_SETTLE_S)
        rss.append(round(server.memory_info().rss / 2**20, 1))
    return results, rss


def rss_trend(rss: list[float], block: int, over: int) -> dict[str, float]:
    """Growth over `over` requests from a robust line (Theil-Sen) through RSS samples taken every
    `block` requests, with its 95% interval: two samples alone swing by a few percent with what
    the last requests left in the allocator, a slope over many does not."""
    from scipy.stats import theilslopes

    if len(rss) < 3:
        return {"growth": 0.0, "growth_low": 0.0, "growth_high": 0.0, "two_point": 0.0}
    slope, intercept, low, high = theilslopes(rss, np.arange(len(rss)))
    level, steps = float(np.median(rss)), over / block
    return {"growth": round(float(slope) * steps / level, 4), "growth_low": round(float(low) * steps / level, 4),
            "growth_high": round(float(high) * steps / level, 4), "two_point": round((rss[-1] - rss[0]) / rss[0], 4)}


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests in the mixed phase")
    parser.add_argument("--baseline", type=int, default=1_000, help="good requests alone, before the mix")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "base.onnx")
    args = parser.parse_args()

    rng = random.Random(0)
    good, hostile = good_inputs(), hostile_files()
    kinds, weights = list(CLASSES), list(CLASSES.values())

    def hostile_item() -> tuple[str, bytes]:
        kind = rng.choices(kinds, weights)[0]
        return kind, rng.choice(hostile.get(kind) or [good[0][1]])

    baseline = [rng.choice(good) for _ in range(args.baseline)]
    mixed = [rng.choice(good) if rng.random() < 0.5 else hostile_item() for _ in range(args.requests)]
    with fedocr_server("serve", "--model", str(args.model), "--cache", "0", "--read-timeout", str(READ_TIMEOUT_S)) \
            as (base, proc):
        port, server = int(base.rsplit(":", 1)[1]), psutil.Process(proc.pid)
        alone = load(base, port, baseline, args.clients)
        mix, rss = load_in_blocks(base, port, mixed, args.clients, server, RSS_BLOCK)

    rows, classes = [], {}
    for kind in sorted({k for k, _, _ in alone + mix}):
        outcomes = Counter(o for k, o, _ in mix if k == kind)
        seconds = [s for k, _, s in mix if k == kind]
        entry = {"requests": len(seconds), "outcomes": dict(outcomes), **percentiles(seconds)}
        if kind.startswith("good"):
            entry["alone"] = percentiles([s for k, _, s in alone if k == kind])
        classes[kind] = entry
        rows.append([kind, len(seconds), ", ".join(f"{o}: {n}" for o, n in outcomes.most_common()),
                     entry["p50_ms"], entry["p99_ms"], entry.get("alone", {}).get("p99_ms", "")])
    print_table(["class", "requests", "outcomes", "p50 ms (mix)", "p99 ms (mix)", "p99 ms alone"], rows)
    good_alone = percentiles([s for k, _, s in alone])
    good_mix = percentiles([s for k, o, s in mix if k.startswith("good")])
    trend = rss_trend(rss[-(5_000 // RSS_BLOCK + 1):], RSS_BLOCK, 5_000)
    growth = trend["growth"]
    all_outcomes = [o for _, o, _ in alone + mix]
    checks = {
        "no_5xx": not any(o.startswith("5") for o in all_outcomes),
        "good_p99_under_mix_at_most_3x_alone": good_mix["p99_ms"] <= 3 * good_alone["p99_ms"],
        "rss_growth_over_last_5000_under_2_percent": growth < 0.02,
        "every_good_request_answered_200": all(o == "200" for k, o, _ in alone + mix if k.startswith("good")),
    }
    print(f"good requests: p99 {good_alone['p99_ms']} ms alone, {good_mix['p99_ms']} ms under the mix; "
          f"RSS after every {RSS_BLOCK} requests, at rest (MiB): {rss}; growth over the last 5,000 (Theil-Sen): "
          f"{growth:.2%} (95% interval {trend['growth_low']:.2%} to {trend['growth_high']:.2%}; first to last "
          f"sample {trend['two_point']:.2%})")
    print("checks:", checks)
    write_result("hostile", {"machine": machine(), "requests": args.requests, "baseline": args.baseline,
                             "clients": args.clients, "model": str(args.model), "read_timeout_s": READ_TIMEOUT_S,
                             "classes": classes, "good_alone": good_alone, "good_under_mix": good_mix,
                             "rss_every": RSS_BLOCK, "rss_mb": rss, "rss_growth_last_5000": trend, "checks": checks})
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
