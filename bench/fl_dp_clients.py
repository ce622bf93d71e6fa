"""Benchmark: client-level differential privacy on 100 clients (issue 14, item 2).

DP-FedAvg (`dp.level = "client"`: each node clips its update to `dp.clip`, the server clips
again, sums with equal weights and adds Gaussian noise calibrated so the planned rounds end at
the target epsilon, McMahan et al. 2018) on `many-clients-mini`: 100 nodes with a long tail of
sizes, 30 sampled per round, from the warm tiny mini model (tests/data). For epsilon in
{inf, 8, 3, 1} at delta 1e-5 and each seed: the final round's validation CER on the server's
public lines, the epsilon the server's ledger reached, the plain run's update norms (what the
clip cuts), and seconds per round. Median and [min, max] over seeds; runs cached in --out.

    .venv/bin/python bench/fl_dp_clients.py [--rounds 10] [--clip 1.0] [--seeds 0,1,2] [--epsilons inf,8,3,1]

Writes bench/results/fl_dp_clients.json.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import WARM_MINI, print_table, simulated_run, spread, write_result

from fedocr.federated.config import SCRATCH_LR, FlConfig

FEDERATION = "many-clients-mini"
DELTA = 1e-5


def run_one(epsilon: float, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    label = f"eps-{epsilon:g}-s{seed}"
    cached = out / f"{label}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    dp = {} if math.isinf(epsilon) else {"dp.level": "client", "dp.clip": args.clip, "dp.target-epsilon": epsilon,
                                         "dp.delta": DELTA}
    run_dir = out / label
    cfg = FlConfig.from_run_config(
        {"federation": FEDERATION, "charset": "mini", "initial-model": str(WARM_MINI), "lr": SCRATCH_LR,
         "num-rounds": args.rounds, "lines-per-client": args.lines, "test-lines": 4, "val-lines": 200,
         "fraction-train": args.fraction, "min-accepted": 2, "round-deadline-s": 1200.0, "seed": seed,
         "out-dir": str(run_dir), "store": str(run_dir / "runs.db"), **dp})
    report, _ = simulated_run(cfg, label)
    rounds = report["rounds"]
    spent = [s["epsilon"] for r in rounds for s in r["steps"] if s["step"] == "dp-noise" and "epsilon" in s]
    norms = [c["update_norm"] for r in rounds for c in r["clients"] if c.get("update_norm") is not None]
    result = {"epsilon_target": epsilon, "seed": seed, "rounds": len(rounds), "val_cer": rounds[-1]["val_cer"],
              "val_cer_by_round": [r["val_cer"] for r in rounds], "sampled": rounds[-1]["sampled"],
              "epsilon_spent": max(spent) if spent else None,
              "median_update_norm": statistics.median(norms) if norms else None,
              "seconds_per_round": statistics.median(r["seconds"] for r in rounds),
              "stopped": (report.get("final") or {}).get("stopped")}
    cached.write_text(json.dumps(result, indent=1))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lines", type=int, default=10, help="lines-per-client (the smallest node's)")
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--clip", type=float, default=1.0, help="dp.clip: the L2 bound of one node's update")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epsilons", default="inf,8,3,1")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedocr-bench-dp-clients"))
    args = parser.parse_args()
    out = (args.out / f"r{args.rounds}-l{args.lines}-f{args.fraction:g}-c{args.clip:g}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {eps: [run_one(eps, s, args, out) for s in seeds] for eps in (float(e) for e in args.epsilons.split(","))}
    keys = ("val_cer", "epsilon_spent", "median_update_norm", "seconds_per_round")
    rows = {f"{eps:g}": {k: spread([r[k] for r in results]) for k in keys} for eps, results in runs.items()}

    def fmt(cell: dict[str, Any], digits: int) -> str:
        return "-" if cell["median"] is None else \
            f"{cell['median']:.{digits}f} [{cell['min']:.{digits}f}, {cell['max']:.{digits}f}]"

    print_table(["epsilon (target)", "final val CER", "epsilon spent", "update norm (plain: what the clip cuts)",
                 "s/round"],
                [[eps, fmt(r["val_cer"], 4), fmt(r["epsilon_spent"], 2), fmt(r["median_update_norm"], 3),
                  fmt(r["seconds_per_round"], 1)] for eps, r in rows.items()])
    plain = rows.get("inf", {}).get("val_cer", {}).get("median")
    result = {"federation": FEDERATION, "rounds": args.rounds, "lines": args.lines, "fraction": args.fraction,
              "clip": args.clip, "delta": DELTA, "seeds": seeds, "rows": rows,
              "cer_ratio_to_plain": {eps: (r["val_cer"]["median"] / plain if plain else None) for eps, r in rows.items()},
              "runs": {f"{e:g}": r for e, r in runs.items()},
              "command": " ".join(["bench/fl_dp_clients.py", *sys.argv[1:]])}
    print(f"wrote {write_result('fl_dp_clients', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
