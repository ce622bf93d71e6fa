"""Benchmark: what secure aggregation and homomorphic encryption cost (issue 14, items 3, 4 and "must show").

Plain FedAvg against Flower's SecAgg+ (`secure.method = "secagg+"`: four message exchanges per
round, masked 2^22-level quantised vectors) and CKKS-encrypted updates (`secure.method = "ckks"`,
TenSEAL, n = 8192: every entry, or the 10% at the server's shared index set with error feedback;
one node decrypts the sum) on Flower's simulation engine, from the warm tiny
mini model (tests/data), on `three-orgs-mini` (3 nodes, all sampled) and `ten-branches-mini`
(10 nodes, 5 sampled). Per run: seconds per round (the collection's wall time, median over
rounds), bytes up and down per client per round (every exchange counted), the last round's
validation CER, and the largest difference between the plain and the secure run's round-1 models
of the same seed (what the quantisation or the encryption changes; meaningful where every node is
sampled: node ids are drawn anew per simulation, so a 5-of-10 draw differs between two runs). Median and [min, max] over seeds.

    .venv/bin/python bench/fl_secure.py [--rounds 3] [--seeds 0,1,2] [--federations three-orgs-mini,ten-branches-mini]

Writes bench/results/fl_secure.json; its `checks` carry the issue's targets (secure aggregation
<= 1.5x plain round time; HE Top-10% <= 2x plain round time and <= 3x plain bytes up).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import WARM_MINI, print_table, simulated_run, spread, write_result

from fedocr.data.organisations import get_federation
from fedocr.federated.config import FlConfig
from fedocr.model import load_checkpoint

SETTINGS: dict[str, dict[str, Any]] = {"plain": {}, "secagg+": {"secure.method": "secagg+"},
                                       "ckks full": {"secure.method": "ckks"},
                                       "ckks top-10%": {"secure.method": "ckks", "he.top-k": 0.1}}
SAMPLED = {"three-orgs-mini": 1.0, "ten-branches-mini": 0.5}


def run_one(federation: str, setting: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    label = f"{federation}-{setting}-s{seed}"
    run_dir = out / label
    cfg = FlConfig.from_run_config(
        {"federation": federation, "charset": "mini", "initial-model": str(WARM_MINI), "num-rounds": args.rounds,
         "lines-per-client": args.lines, "test-lines": 20, "val-lines": 100, "fraction-train": SAMPLED[federation],
         "min-accepted": 2, "round-deadline-s": 600.0, "seed": seed, "out-dir": str(run_dir),
         "store": str(run_dir / "runs.db"), "secure.max-weight": float(args.lines * largest_node(federation)),
         **SETTINGS[setting]})
    report, _ = simulated_run(cfg, label)
    rounds = report["rounds"]
    clients = [c for r in rounds for c in r["clients"] if c["accepted"]]
    return {"federation": federation, "setting": setting, "seed": seed,
            "seconds_per_round": statistics.median(r["seconds"] for r in rounds),
            "kb_up_per_client_round": statistics.mean(c["bytes_up"] for c in clients) / 1024,
            "kb_down_per_client_round": statistics.mean(c["bytes_down"] for c in clients) / 1024,
            "val_cer": rounds[-1]["val_cer"], "accepted": [r["accepted"] for r in rounds],
            "round_1": str(run_dir / "round-1.pt")}


def largest_node(federation: str) -> int:
    """The largest node's share of lines-per-client: SecAgg+'s max-weight (a node's examples weigh at most 1)."""
    return max(node.size for node in get_federation(federation).nodes)


def model_gap(a: str, b: str) -> float:
    """The largest absolute difference between two checkpoints' float tensors."""
    sa, sb = load_checkpoint(Path(a)).model.state_dict(), load_checkpoint(Path(b)).model.state_dict()
    return max(float(np.max(np.abs(sa[k].double().numpy() - sb[k].double().numpy())))
               for k in sa if sa[k].is_floating_point())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=96)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--federations", default="three-orgs-mini,ten-branches-mini")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fl-secure"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, table, checks = {}, [], {}
    for federation in args.federations.split(","):
        runs = {s: [run_one(federation, s, seed, args, args.out) for seed in seeds] for s in SETTINGS}
        for setting, results in runs.items():
            row = {k: spread([r[k] for r in results]) for k in
                   ("seconds_per_round", "kb_up_per_client_round", "kb_down_per_client_round", "val_cer")}
            rows[f"{federation}/{setting}"] = {**row, "runs": results}
            table.append([federation, setting, row["seconds_per_round"]["median"],
                          row["kb_up_per_client_round"]["median"], row["kb_down_per_client_round"]["median"],
                          f"{row['val_cer']['median']:.4f}"])
        plain = rows[f"{federation}/plain"]
        for setting in list(SETTINGS)[1:]:
            row = rows[f"{federation}/{setting}"]
            row["time_ratio_to_plain"] = (row["seconds_per_round"]["median"] / plain["seconds_per_round"]["median"])
            row["bytes_up_ratio_to_plain"] = (row["kb_up_per_client_round"]["median"]
                                              / plain["kb_up_per_client_round"]["median"])
            row["round_1_model_gap"] = spread([model_gap(p["round_1"], q["round_1"])
                                               for p, q in zip(runs["plain"], runs[setting])])
            print(f"{federation} {setting}: {row['time_ratio_to_plain']:.2f}x plain seconds per round, "
                  f"{row['bytes_up_ratio_to_plain']:.1f}x bytes up; round-1 model gap "
                  f"{row['round_1_model_gap']['max']:.2e}")
        secagg, top = rows[f"{federation}/secagg+"], rows[f"{federation}/ckks top-10%"]
        checks[f"{federation}_secagg_within_1_5x_plain_round_time"] = secagg["time_ratio_to_plain"] <= 1.5
        checks[f"{federation}_he_top10_within_2x_plain_round_time"] = top["time_ratio_to_plain"] <= 2
        checks[f"{federation}_he_top10_within_3x_plain_bytes"] = top["bytes_up_ratio_to_plain"] <= 3
    print_table(["federation", "setting", "s/round", "KB up/client/round", "KB down/client/round", "val CER"], table)
    result = {"rows": rows, "checks": checks, "seeds": seeds, "rounds": args.rounds, "lines": args.lines,
              "command": " ".join(["bench/fl_secure.py", *sys.argv[1:]])}
    print(f"wrote {write_result('fl_secure', result)}")
    print(json.dumps(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
