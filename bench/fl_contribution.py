"""Benchmark: does each node's measured contribution find a free rider or a poisoned node, and what does it cost?

Runs short federations on Flower's simulation engine with `contribution.method = both`
(leave-one-out and GTG-Shapley on the validation loss, CER recorded alongside), one attacker per run,
from one of two starts (`--start`):

- `warm`: the mini presets from the warm tiny mini-vocabulary model (9 FedAvg rounds from
  scratch: past CTC's blank plateau, so a round's updates change the validation loss measurably);
- `base`: the full presets from the shipped base model (full vocabulary), as an organisation would
  fine-tune it; results go to bench/results/fl_contribution_base.json.

The runs:
- three-orgs(-mini) (3 nodes: Shapley is exact from the 8 subsets) with bank as a free rider (sends
  zeros while claiming its examples) and, separately, with school training on label-shuffled lines;
- ten-branches(-mini) (10 nodes: GTG-Shapley, Monte-Carlo with truncation) with bank-2 as a free rider
  and with bank-2 training on label-shuffled lines.

Each run twice per `contribution.subsets` (`alone`: a coalition's own FedAvg, the paper's; `in-round`: the
others send zeros) and per local rate: the fine-tuning rate 1e-4, and the from-scratch rate 3e-3 at which
the honest steps overshoot on the validation set, where `alone` credits a zero update for damping them.
For each run: where the attacker ranks among the nodes by Shapley and by LOO in each round and over
the run (1 = most helpful), whether its cumulative interval lies below every honest node's value,
and the estimator's cost per round (seconds, evaluations, permutations) beside the round's training
time. Over several seeds (`--seeds`), a check holds only when it holds in every seed. Prints a table
and writes bench/results/fl_contribution(_base).json with a `checks` object.

    .venv/bin/python bench/fl_contribution.py [--start warm|base] [--rounds 3] [--lines 32] [--seeds 0,1,2]
        [--runs three-free,...] [--subsets alone,in-round] [--lr 0.0001,0.003] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _common import cached, print_table, result_name, simulated_run, spread, starting_weights, write_result
from _federations import STARTS

from fedocr.federated.config import FINETUNE_LR, SCRATCH_LR, VAL_SETS, FlConfig

RUNS: dict[str, tuple[str, str, str]] = {   # name -> (federation under --start base, attacker, attack)
    "three-free": ("three-orgs", "bank", "free-rider"),
    "three-shuffle": ("three-orgs", "school", "label-shuffle"),
    "ten-free": ("ten-branches", "bank-2", "free-rider"),
    "ten-shuffle": ("ten-branches", "bank-2", "label-shuffle"),
}


def rank(values: dict[str, float | None], node: str) -> int | None:
    """1-based position of `node` when the nodes are sorted by value, highest first."""
    if values.get(node) is None:
        return None
    return 1 + sum(1 for v in values.values() if v is not None and v > values[node])


def run_one(name: str, subsets: str, lr: float, val_data: str, seed: int, args: argparse.Namespace,
            out: Path) -> dict[str, Any]:
    federation, attacker, attack = RUNS[name]
    if args.start == "warm":
        federation += "-mini"
    # Runs of the first version (warm, one seed, public) are cached under the label without the rest.
    label = (f"{name}-{subsets}-lr{lr:g}" + ("" if val_data == "public" else f"-val{val_data}")
             + ("" if args.start == "warm" and seed == 0 else f"-seed{seed}"))
    summary, run_dir = out / f"{label}.json", out / label
    cfg = FlConfig.from_run_config(
        {"federation": federation, **STARTS[args.start], "lr": lr,
         "num-rounds": args.rounds, "lines-per-client": args.lines, "val-lines": 100, "fraction-train": 1.0,
         "min-accepted": 2, "round-deadline-s": 600.0, "seed": seed, "out-dir": str(run_dir), "val-data": val_data,
         "baselines": False,
         "store": str(run_dir / "runs.db"), "attack.nodes": f"{attacker}:{attack}",
         "contribution.method": "both", "contribution.lines": args.eval_lines,
         "contribution.samples": args.samples, "contribution.subsets": subsets})
    # The run is cached by its report (summarised again on every call, so a change to the summary
    # needs no new run) and its settings, which must match: the label does not hold them all.
    if not (run_dir / "report.json").is_file():
        summary.unlink(missing_ok=True)

    def run() -> dict[str, Any]:
        started = time.time()
        simulated_run(cfg, label)
        return {"wall_seconds": time.time() - started}

    made = cached(summary, {**cfg.to_dict(), "initial_weights": starting_weights(cfg)}, run)
    return summarise(json.loads((run_dir / "report.json").read_text()), name, seed, made["wall_seconds"])


def summarise(report: dict[str, Any], name: str, seed: int, wall_seconds: float) -> dict[str, Any]:
    """Where the run's attacker ranks by round and over the run, and what the estimator cost."""
    _, attacker, attack = RUNS[name]
    config = report["config"]
    rounds = []
    for r in report["rounds"]:
        rows = {s["client"]: s for s in r["steps"] if s["step"] == "contribution"}
        server = rows.pop("*")
        # An attacker the server's checks rejected (a free rider's repeated zeros are a replay) is not scored.
        rejected = next((c["reason"] for c in r["clients"] if c["id"] == attacker and not c["accepted"]), None)
        rounds.append({"round": r["round"], "val_cer": r["val_cer"], "val_loss": r["val_loss"],
                       "train_seconds": r["train_seconds"],
                       "contribution_seconds": server["seconds"], "evaluations": server["evaluations"],
                       "permutations": server["permutations"], "estimator": server["estimator"],
                       "truncated": server["truncated"],
                       "shapley_rank": rank({c: v["shapley"] for c, v in rows.items()}, attacker),
                       "loo_rank": rank({c: v["loo"] for c, v in rows.items()}, attacker),
                       "cer_shapley_rank": rank({c: v.get("shapley_val_cer") for c, v in rows.items()}, attacker),
                       "attacker": ({k: rows[attacker].get(k) for k in ("loo", "shapley", "shapley_ci")}
                                    if attacker in rows else None),
                       "attacker_rejected": rejected,
                       "honest_shapley_min": min(v["shapley"] for c, v in rows.items() if c != attacker)})
    total = report["final"]["contribution"]["clients"]
    honest = [v["shapley"] for c, v in total.items() if c != attacker]
    if attacker not in total:   # rejected in every round: nothing to rank
        raise SystemExit(f"bench: {report['name']}: the checks rejected {attacker} in every round; nothing was scored")
    return {"seed": seed, "run": name, "subsets": config["steps"]["contribution.subsets"], "lr": config["lr"],
            "val_data": config.get("val_data", "public"), "federation": config["federation"],
            "attacker": attacker, "attack": attack,
            "nodes": len(total), "rounds": rounds,
            "cumulative": {c: {k: v[k] for k in ("loo", "shapley", "shapley_ci")} for c, v in total.items()},
            "cumulative_shapley_rank": rank({c: v["shapley"] for c, v in total.items()}, attacker),
            "cumulative_loo_rank": rank({c: v["loo"] for c, v in total.items()}, attacker),
            "attacker_interval_below_every_honest_node": total[attacker]["shapley_ci"][1] < min(honest),
            "seconds_per_round": statistics.mean(r["contribution_seconds"] for r in rounds),
            "evaluations_per_round": statistics.mean(r["evaluations"] for r in rounds),
            "train_seconds_per_round": statistics.mean(r["train_seconds"] or 0 for r in rounds),
            "wall_seconds": wall_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=32, help="training lines per node")
    parser.add_argument("--eval-lines", type=int, default=64, help="contribution.lines")
    parser.add_argument("--samples", type=int, default=20, help="contribution.samples")
    parser.add_argument("--start", choices=("warm", "base"), default="warm",
                        help="warm: the mini presets from the warm tiny model; base: the full ones from the base model")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds")
    parser.add_argument("--lr", default=f"{FINETUNE_LR:g},{SCRATCH_LR:g}",
                        help="local rates to compare (the warm model is 9 rounds into a from-scratch run at "
                             f"{SCRATCH_LR:g}, which overshoots on the validation set from there)")
    parser.add_argument("--subsets", default="alone,in-round", help="contribution.subsets to compare")
    parser.add_argument("--val-data", default="public",
                        help="what the server validates (and so values contributions) on: public, members, "
                             "or both comma-separated")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedocr-bench-contribution"))
    parser.add_argument("--result", type=result_name, help="name of the results JSON (default: fl_contribution, or with --start base "
                                         "fl_contribution_base, _public when it validates on public only)")
    args = parser.parse_args()
    if unknown := set(args.val_data.split(",")) - set(VAL_SETS):
        parser.error(f"--val-data: {', '.join(sorted(unknown))} is not one of {', '.join(VAL_SETS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_one(name, subsets, float(lr), val_data, int(seed), args, args.out)
               for val_data in args.val_data.split(",") for lr in args.lr.split(",")
               for subsets in args.subsets.split(",") for name in args.runs.split(",") for seed in args.seeds.split(",")]
    print_table(["run", "val", "seed", "coalitions", "local lr", "nodes", "attacker",
                 "Shapley rank by round (x: rejected)", "LOO rank by round", "run rank (S/LOO)", "s / round",
                 "evals / round", "train s / round"],
                [[r["run"], r.get("val_data", "public"), r["seed"], r["subsets"], f"{r['lr']:g}", r["nodes"],
                  f"{r['attacker']} ({r['attack']})",
                  " ".join(str(x["shapley_rank"] or "x") for x in r["rounds"]),
                  " ".join(str(x["loo_rank"] or "x") for x in r["rounds"]),
                  f"{r['cumulative_shapley_rank']}/{r['cumulative_loo_rank']}", r["seconds_per_round"],
                  r["evaluations_per_round"], r["train_seconds_per_round"]] for r in results])
    def key(r: dict[str, Any]) -> str:
        val_data = r.get("val_data", "public")
        return f"{r['run']}_{r['subsets']}_lr{r['lr']:g}" + ("" if val_data == "public" else f"_val-{val_data}")
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_key.setdefault(key(r), []).append(r)
    # A check holds only when it holds in every seed.
    checks = {f"{k}_attacker_ranks_last_over_the_run": all(r["cumulative_shapley_rank"] == r["nodes"] for r in rs)
              for k, rs in by_key.items()}
    checks |= {f"{k}_attacker_interval_below_honest": all(r["attacker_interval_below_every_honest_node"] for r in rs)
               for k, rs in by_key.items()}
    over_seeds = {k: {"attacker_run_rank": spread([r["cumulative_shapley_rank"] for r in rs]),
                      "attacker_run_rank_loo": spread([r["cumulative_loo_rank"] for r in rs]),
                      "seconds_per_round": spread([r["seconds_per_round"] for r in rs]),
                      "train_seconds_per_round": spread([r["train_seconds_per_round"] for r in rs])}
                  for k, rs in by_key.items()}
    name = args.result or ("fl_contribution" if args.start == "warm" else
                           f"fl_contribution_{args.start}" + ("_public" if args.val_data == "public" else ""))
    path = write_result(name, {"config": vars(args) | {"out": str(args.out)}, "runs": results,
                               "over_seeds": over_seeds, "checks": checks})
    print(json.dumps(checks, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
