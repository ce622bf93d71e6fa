"""Benchmark: a federation of many small clients on Flower's simulation engine (issue 15, item 3).

Runs `many-clients-mini-10`, `many-clients-mini` (100) and `many-clients-mini-1000`: the same
long tail of node sizes over three organisations, with the same number of clients sampled per
round (--sampled, 10 by default, so 100% / 10% / 1%), from the warm tiny mini model, and measures
per number of registered clients:

- seconds per round (median over rounds 2..N: round 1 also starts the Ray actors) and the
  framework's share of it (the round's wall time minus local training on its critical path,
  as the run store records it);
- the server's memory: resident and peak (VmHWM) of the simulation process that runs the
  ServerApp and the virtual SuperNodes' bookkeeping, and of the SuperLink, sampled every 0.5 s
  (the Ray actors that train the clients are separate processes, two here, whatever N);
- the one-off costs that do grow with N: start-up plus the first contact with every node, and
  the federated evaluation on every node's held-out lines after the last round.

    .venv/bin/python bench/fl_scale.py [--rounds 20] [--sampled 10] [--clients 10,100,1000]
        [--lines 10] [--out DIR]

Target (issue 15): with a fixed number sampled, seconds per round and server memory grow at most
1.2x from 100 to 1,000 registered clients.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from _common import WARM_MINI, print_table, simulated_run, write_result

from fedocr.federated.config import SCRATCH_LR, FlConfig

PRESETS = {10: "many-clients-mini-10", 100: "many-clients-mini", 1000: "many-clients-mini-1000"}
MiB = 2**20


class MemorySampler:
    """Polls the processes of one simulation (found by the SuperLink's database path, which is
    unique to the run's out-dir) for resident and peak memory."""

    def __init__(self, marker: str, every_s: float = 0.5) -> None:
        self.marker, self.every_s = marker, every_s
        self.peak: dict[str, float] = {}      # role -> max VmHWM (MiB)
        self.rss: dict[str, list[float]] = {}  # role -> RSS samples (MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _processes(self) -> dict[str, psutil.Process]:
        found: dict[str, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "flower-superlink" in cmd and self.marker in cmd:
                found["superlink"] = proc
                try:
                    for child in proc.children(recursive=True):
                        if "flwr-simulation" in " ".join(child.cmdline()):
                            found["simulation"] = child
                except psutil.NoSuchProcess:
                    pass
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for role, proc in self._processes().items():
                try:
                    rss = proc.memory_info().rss / MiB
                    hwm = _vm_hwm(proc.pid)
                except (psutil.NoSuchProcess, OSError):
                    continue
                self.rss.setdefault(role, []).append(rss)
                self.peak[role] = max(self.peak.get(role, 0.0), hwm or rss)


def _vm_hwm(pid: int) -> float | None:
    """The kernel's peak resident size of a process (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def run_one(clients: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cached = out / f"n{clients}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    run_dir = out / f"n{clients}"
    cfg = FlConfig.from_run_config(
        {"federation": PRESETS[clients], "charset": "mini", "initial-model": str(WARM_MINI), "lr": SCRATCH_LR,
         "num-rounds": args.rounds, "lines-per-client": args.lines, "test-lines": args.test_lines, "val-lines": 100,
         "fraction-train": args.sampled / clients, "min-accepted": 2, "round-deadline-s": 600.0,
         "wait-for-nodes-s": 600.0, "seed": args.seed, "out-dir": str(run_dir), "store": str(run_dir / "runs.db")})
    started = time.time()
    with MemorySampler(str(run_dir)) as memory:
        report, _ = simulated_run(cfg, f"n={clients}")
    wall = time.time() - started
    rounds = report["rounds"]
    steady = rounds[1:] or rounds
    round_s = sum(r["seconds"] + (r.get("val_seconds") or 0) for r in rounds)
    result = {
        "clients": clients, "preset": PRESETS[clients], "sampled_per_round": [r["sampled"] for r in rounds],
        "rounds": len(rounds), "final_val_cer": rounds[-1]["val_cer"],
        "seconds_per_round": statistics.median(r["seconds"] + (r.get("val_seconds") or 0) for r in steady),
        "overhead_share": statistics.median(r["overhead_seconds"] / r["seconds"] for r in steady
                                            if r.get("overhead_seconds") is not None and r["seconds"]),
        "server_rss_mib": statistics.median(memory.rss.get("simulation", [0.0])),
        "server_peak_mib": memory.peak.get("simulation"),
        "superlink_peak_mib": memory.peak.get("superlink"),
        # everything outside the rounds: start-up, first contact with every node, the last evaluation on every node
        "one_off_seconds": wall - round_s, "wall_seconds": wall,
    }
    cached.write_text(json.dumps(result, indent=1))
    return result


def growth(rows: dict[int, dict[str, Any]], key: str, small: int = 100, large: int = 1000) -> float | None:
    if small not in rows or large not in rows or not rows[small][key]:
        return None
    return rows[large][key] / rows[small][key]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sampled", type=int, default=10, help="clients per round, whatever the number registered")
    parser.add_argument("--clients", default="10,100,1000", help="registered clients: any of 10, 100, 1000")
    parser.add_argument("--lines", type=int, default=10, help="lines-per-client (the smallest node's training lines)")
    parser.add_argument("--test-lines", type=int, default=4, help="held-out lines per node for the last evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fl-scale"))
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    if unknown := [c for c in counts if c not in PRESETS]:
        parser.error(f"--clients: {unknown} not among {sorted(PRESETS)}")
    out = (args.out / f"r{args.rounds}-k{args.sampled}-l{args.lines}-t{args.test_lines}-s{args.seed}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = {n: run_one(n, args, out) for n in counts}
    print_table(["registered", "sampled", "s/round", "overhead share", "server RSS MiB", "server peak MiB",
                 "SuperLink peak MiB", "one-off s", "final val CER"],
                [[n, r["sampled_per_round"][-1], r["seconds_per_round"], f"{r['overhead_share']:.0%}",
                  r["server_rss_mib"], r["server_peak_mib"] or 0.0, r["superlink_peak_mib"] or 0.0,
                  r["one_off_seconds"], f"{r['final_val_cer']:.4f}"] for n, r in rows.items()])
    ratios = {key: growth(rows, key) for key in ("seconds_per_round", "server_peak_mib", "superlink_peak_mib")}
    checks = {"round_seconds_grow_at_most_1_2x_100_to_1000":
              ratios["seconds_per_round"] <= 1.2 if ratios["seconds_per_round"] else None,
              "server_memory_grows_at_most_1_2x_100_to_1000":
              ratios["server_peak_mib"] <= 1.2 if ratios["server_peak_mib"] else None}
    result = {"rounds": args.rounds, "sampled": args.sampled, "lines": args.lines, "test_lines": args.test_lines,
              "seed": args.seed, "rows": list(rows.values()), "growth_100_to_1000": ratios, "checks": checks,
              "command": " ".join(["bench/fl_scale.py", *sys.argv[1:]])}
    path = write_result("fl_scale", result)
    print(json.dumps({"growth_100_to_1000": ratios, "checks": checks}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
