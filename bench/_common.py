"""Helpers shared by the benchmarks: timing, tables, result files with machine facts."""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# The mini federation after 9 dense FedAvg rounds from scratch (fl_compress's dense seed-0 run):
# past CTC's all-blank plateau, as any federation that starts from a trained model is.
WARM_MINI = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny-mini-warm.pt"
DATA = Path(__file__).resolve().parent / "data"  # the external check sets, one folder with labels.tsv each


def external_set_dirs() -> list[Path]:
    return [labels.parent for labels in sorted(DATA.glob("*/labels.tsv"))]


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free_port() -> int:
    """A free loopback port for a benchmark's server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fedocr_server(*command: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A serving `fedocr` command (`serve ...`, `fl dashboard ...`) on a free loopback port, once
    /api/health answers: (base URL, process). Stopped by PID at exit, even on failure."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fedocr", *command, "--port", str(port), "--host", "127.0.0.1",
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"fedocr {command[0]} did not start")
        yield base, proc
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": str(torch.__version__), "processor": platform.processor() or platform.machine(),
            "load_avg_1m": os.getloadavg()[0]}


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in cells:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    write_json(path, {"machine": machine(), **payload}, indent=2)
    return path


def result_name(text: str) -> str:
    """argparse type of --result: a file name in bench/results, without a folder (".json" optional)."""
    name = text.removesuffix(".json")
    if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise argparse.ArgumentTypeError(f"{text!r}: a file name in bench/results (letters, digits, '.', '-', '_')")
    return name


def refuse_to_replace(parser: argparse.ArgumentParser, name: str, planned: dict[str, Any], flag: str,
                      predates: dict[str, Any] | None = None) -> None:
    """Stop (a usage error naming `flag`, the way to choose another name) before a benchmark
    overwrites bench/results/NAME.json made with other settings than `planned`. A setting the
    file predates had the value `predates` gives (its default then), or, not given there, is not
    compared."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return
    then = {**(predates or {}), **json.loads(path.read_text(encoding="utf-8"))}
    now = json.loads(json.dumps(planned))
    if differ := [k for k, v in now.items() if k in then and then[k] != v]:
        parser.error(f"{path} holds results of other settings ({', '.join(differ)}): name these with {flag}")


def write_json(path: Path, payload: dict[str, Any], indent: int = 1) -> None:
    """Write a JSON file whole or not at all (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def cached(path: Path, settings: dict[str, Any], compute: Callable[[], dict[str, Any]],
           recompute_if_changed: bool = False) -> dict[str, Any]:
    """A benchmark run's result, from `path` when it was computed with these `settings` (so a
    stopped benchmark resumes where it left off), else computed and saved with them. A cache made
    with other settings stops the benchmark rather than mixing runs, or, for a result that is
    cheap to make again (a score of a run that was retrained), is computed again."""
    wanted = json.loads(json.dumps(settings))
    if path.is_file():
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("settings") == wanted:
            return result
        if not recompute_if_changed:
            raise SystemExit(f"{path} was run with other settings ({result.get('settings')}); "
                             "give these ones another --out (or --tag, where the benchmark has one)")
    result = {**compute(), "settings": wanted}
    write_json(path, result)
    return result


def starting_weights(cfg: Any) -> str:
    """What a federation starts from, for a run cache's settings: the initial checkpoint's
    SHA-256 (a retrained base model must not reuse runs of the old one), or "scratch"."""
    from fedocr.export import file_digest

    start = cfg.initial_model_path()
    return file_digest(start) if start is not None else "scratch"


def simulated_run(cfg: Any, label: str) -> tuple[dict[str, Any], Any]:
    """One federation on Flower's simulation engine (no baselines): its report and its last round's
    checkpoint. A run that does not finish stops the benchmark with its reason."""
    from fedocr.federated.sim.simulate import simulate
    from fedocr.model import load_checkpoint

    report = simulate(cfg, baselines=False, printer=lambda s: print(f"  [{label}] {s}", flush=True))
    if report["status"] != "finished":
        raise SystemExit(f"bench: {label}: run {report['status']}: {report.get('error')}")
    return report, load_checkpoint(cfg.out_path() / f"round-{report['rounds'][-1]['round']}.pt")


def spread(values: list[Any]) -> dict[str, Any]:
    """Median and range over seeds (None where a run measured nothing), with the values themselves."""
    known = [v for v in values if v is not None]
    if not known:
        return {"median": None, "min": None, "max": None, "values": values}
    return {"median": statistics.median(known), "min": min(known), "max": max(known), "values": values}
