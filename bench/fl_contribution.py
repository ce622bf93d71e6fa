"""Benchmark: does each node's measured contribution find a free rider or a poisoned node, and what does it cost?

Runs short federations on Flower's simulation engine from the warm tiny mini-vocabulary model (9
FedAvg rounds from scratch: past CTC's blank plateau, so a round's updates change the validation
loss measurably), with `contribution.method = both` (leave-one-out and GTG-Shapley on the
validation loss, CER recorded alongside), one attacker per run:

- three-orgs-mini (3 nodes: Shapley is exact from the 8 subsets) with bank as a free rider (sends
  zeros while claiming its examples) and, separately, with school training on label-shuffled lines;
- ten-branches-mini (10 nodes: GTG-Shapley, Monte-Carlo with truncation) with bank-2 as a free rider
  and with bank-2 training on label-shuffled lines.

Each run twice per `contribution.subsets` (`alone`: a coalition's own FedAvg, the paper's; `in-round`: the
others send zeros) and per local rate: the fine-tuning rate 1e-4, and the from-scratch rate 3e-3 at which
the honest steps overshoot on the validation set, where `alone` credits a zero update for damping them.
For each run: where the attacker ranks among the nodes by Shapley and by LOO in each round and over
the run (1 = most helpful), whether its cumulative interval lies below every honest node's value,
and the estimator's cost per round (seconds, evaluations, permutations) beside the round's training
time. Prints a table and writes bench/results/fl_contribution.json with a `checks` object.

    .venv/bin/python bench/fl_contribution.py [--rounds 3] [--lines 32] [--runs three-free,...] [--subsets alone,in-round]
        [--lr 0.0001,0.003] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _common import print_table, simulated_run, write_result

from fedocr.federated.config import FINETUNE_LR, SCRATCH_LR, FlConfig

WARM_MINI = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny-mini-warm.pt"
RUNS: dict[str, tuple[str, str, str]] = {   # name -> (federation, attacker, attack)
    "three-free": ("three-orgs-mini", "bank", "free-rider"),
    "three-shuffle": ("three-orgs-mini", "school", "label-shuffle"),
    "ten-free": ("ten-branches-mini", "bank-2", "free-rider"),
    "ten-shuffle": ("ten-branches-mini", "bank-2", "label-shuffle"),
}


def rank(values: dict[str, float | None], node: str) -> int | None:
    """1-based position of `node` when the nodes are sorted by value, highest first."""
    if values.get(node) is None:
        return None
    return 1 + sum(1 for v in values.values() if v is not None and v > values[node])


def run_one(name: str, subsets: str, lr: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    federation, attacker, attack = RUNS[name]
    label = f"{name}-{subsets}-lr{lr:g}"
    cached = out / f"{label}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    run_dir = out / label
    cfg = FlConfig.from_run_config(
        {"federation": federation, "charset": "mini", "initial-model": str(WARM_MINI), "lr": lr,
         "num-rounds": args.rounds, "lines-per-client": args.lines, "val-lines": 100, "fraction-train": 1.0,
         "min-accepted": 2, "round-deadline-s": 600.0, "seed": args.seed, "out-dir": str(run_dir),
         "store": str(run_dir / "runs.db"), "attack.nodes": f"{attacker}:{attack}",
         "contribution.method": "both", "contribution.lines": args.eval_lines,
         "contribution.samples": args.samples, "contribution.subsets": subsets})
    started = time.time()
    report, _ = simulated_run(cfg, label)
    rounds = []
    for r in report["rounds"]:
        rows = {s["client"]: s for s in r["steps"] if s["step"] == "contribution"}
        server = rows.pop("*")
        rounds.append({"round": r["round"], "val_loss": r["val_loss"], "train_seconds": r["train_seconds"],
                       "contribution_seconds": server["seconds"], "evaluations": server["evaluations"],
                       "permutations": server["permutations"], "estimator": server["estimator"],
                       "truncated": server["truncated"],
                       "shapley_rank": rank({c: v["shapley"] for c, v in rows.items()}, attacker),
                       "loo_rank": rank({c: v["loo"] for c, v in rows.items()}, attacker),
                       "cer_shapley_rank": rank({c: v.get("shapley_val_cer") for c, v in rows.items()}, attacker),
                       "attacker": {k: rows[attacker].get(k) for k in ("loo", "shapley", "shapley_ci")},
                       "honest_shapley_min": min(v["shapley"] for c, v in rows.items() if c != attacker)})
    total = report["final"]["contribution"]["clients"]
    honest = [v["shapley"] for c, v in total.items() if c != attacker]
    result = {"run": name, "subsets": subsets, "lr": lr, "federation": federation, "attacker": attacker, "attack": attack,
              "nodes": len(total), "rounds": rounds,
              "cumulative": {c: {k: v[k] for k in ("loo", "shapley", "shapley_ci")} for c, v in total.items()},
              "cumulative_shapley_rank": rank({c: v["shapley"] for c, v in total.items()}, attacker),
              "cumulative_loo_rank": rank({c: v["loo"] for c, v in total.items()}, attacker),
              "attacker_interval_below_every_honest_node": total[attacker]["shapley_ci"][1] < min(honest),
              "seconds_per_round": statistics.mean(r["contribution_seconds"] for r in rounds),
              "evaluations_per_round": statistics.mean(r["evaluations"] for r in rounds),
              "train_seconds_per_round": statistics.mean(r["train_seconds"] or 0 for r in rounds),
              "wall_seconds": time.time() - started}
    cached.write_text(json.dumps(result, indent=1))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=32, help="training lines per node")
    parser.add_argument("--eval-lines", type=int, default=64, help="contribution.lines")
    parser.add_argument("--samples", type=int, default=20, help="contribution.samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", default=f"{FINETUNE_LR:g},{SCRATCH_LR:g}",
                        help="local rates to compare (the warm model is 9 rounds into a from-scratch run at "
                             f"{SCRATCH_LR:g}, which overshoots on the validation set from there)")
    parser.add_argument("--subsets", default="alone,in-round", help="contribution.subsets to compare")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedocr-bench-contribution"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_one(name, subsets, float(lr), args, args.out) for lr in args.lr.split(",")
               for subsets in args.subsets.split(",") for name in args.runs.split(",")]
    print_table(["run", "coalitions", "local lr", "nodes", "attacker", "Shapley rank by round", "LOO rank by round", "run rank (S/LOO)",
                 "s / round", "evals / round", "train s / round"],
                [[r["run"], r["subsets"], f"{r['lr']:g}", r["nodes"], f"{r['attacker']} ({r['attack']})",
                  " ".join(str(x["shapley_rank"]) for x in r["rounds"]), " ".join(str(x["loo_rank"]) for x in r["rounds"]),
                  f"{r['cumulative_shapley_rank']}/{r['cumulative_loo_rank']}", r["seconds_per_round"],
                  r["evaluations_per_round"], r["train_seconds_per_round"]] for r in results])
    def key(r: dict[str, Any]) -> str:
        return f"{r['run']}_{r['subsets']}_lr{r['lr']:g}"
    checks = {f"{key(r)}_attacker_ranks_last_over_the_run": r["cumulative_shapley_rank"] == r["nodes"] for r in results}
    checks |= {f"{key(r)}_attacker_interval_below_honest": r["attacker_interval_below_every_honest_node"]
               for r in results}
    path = write_result("fl_contribution", {"config": vars(args) | {"out": str(args.out)}, "runs": results,
                                            "checks": checks})
    print(json.dumps(checks, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
