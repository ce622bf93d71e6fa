"""Benchmark: malicious nodes against robust aggregation (issue 12).

Runs the ten-branch federation (`ten-branches-mini`: the mini vocabulary, 10 nodes of uneven
size) on Flower's simulation engine once per attack x defence x number of malicious nodes, and
prints and writes bench/results/fl_robust.json:

- final mean own-test CER over all nodes, relative to the clean FedAvg run (same rounds, seed);
- backdoor attack success rate: the share of triggered test lines (every node's) read exactly as
  the attacker wants;
- the flags of the per-node anomaly scores: the share of honest node-rounds flagged (false
  positives) and of malicious node-rounds flagged;
- seconds per round.

Attacks (`attack.nodes`): sign flip, boost (x `attack.scale`, just under the norm bound), Gaussian
noise, free rider, two colluders, label shuffling, backdoor + boost (model replacement). The
malicious nodes are bank-2 (1 of 10) and bank-2 + school-2 (2 of 10). Defences (`robust.*`, f = the
number of malicious nodes, min-accepted = 2f + 3 so that every rule can run): FedAvg, clip to 2x the
median norm, coordinate median, trimmed mean, Multi-Krum, FLTrust (`trust`, the server's update on
its 64 root lines) and the default (robust.RECOMMENDED). Every row but `default+bound` turns the
adaptive norm bound of the server's check off (`max-norm-ratio = 0`) to measure the rules alone;
`default+bound` is the recommended rule with every screen a run has by default.
Runs are cached in --out, so an interrupted benchmark resumes where it stopped.

    .venv/bin/python bench/fl_robust.py [--rounds 12] [--lines 16] [--start scratch|warm]
        [--malicious 1,2] [--attacks clean,boost,...] [--defences fedavg,default,...] [--out DIR] [--cached-only]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import print_table, simulated_run, write_result

from fedocr.data import ConcatLines
from fedocr.federated.config import SCRATCH_LR, FlConfig
from fedocr.federated.pipeline.robust import RECOMMENDED
from fedocr.federated.sim.baselines import test_sets
from fedocr.federated.sim.poison import backdoor_success_rate
from fedocr.model import torch_logits_fn
from fedocr.train import evaluate

FEDERATION = "ten-branches-mini"
WARM_MINI = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny-mini-warm.pt"
MALICIOUS = {1: ["bank-2"], 2: ["bank-2", "school-2"]}
ATTACKS = {"clean": "", "sign-flip": "sign-flip", "boost": "boost", "noise": "noise", "free-rider": "free-rider",
           "collude": "collude", "label-shuffle": "label-shuffle", "backdoor": "backdoor+boost"}
DEFENCES: dict[str, dict[str, Any]] = {
    "fedavg": {}, "clip": {"robust.clip-median": 2.0}, "median": {"robust.rule": "median"},
    "trimmed mean": {"robust.rule": "trimmed-mean"}, "multi-krum": {"robust.rule": "multi-krum"},
    "trust": {"robust.rule": "trust"},
    "default": {k: v for k, v in RECOMMENDED.items() if k != "robust.f"},
    # the recommended rule behind every screen a run has by default (the adaptive norm bound too)
    "default+bound": {**{k: v for k, v in RECOMMENDED.items() if k != "robust.f"}, "max-norm-ratio": 10.0},
}


def run_name(attack: str, defence: str, malicious: int) -> str:
    """The run's folder and cache name. The clean FedAvg run does not depend on the number of
    malicious nodes: one run serves both."""
    name = f"{attack}-{defence}" + ("" if (attack, defence) == ("clean", "fedavg") else f"-m{malicious}")
    return name.replace(" ", "_")


def run_one(attack: str, defence: str, malicious: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One federation (cached as out/ATTACK-DEFENCE-mN.json); a clean run has no malicious node."""
    bad = MALICIOUS[malicious] if ATTACKS[attack] else []
    name = run_name(attack, defence, malicious)
    cached = out / f"{name}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    run_dir = out / name
    warm = args.start == "warm"
    cfg = FlConfig.from_run_config(
        {"federation": FEDERATION, "charset": "mini", "initial-model": str(WARM_MINI) if warm else "scratch",
         **({"lr": SCRATCH_LR} if warm else {}),  # the warm model is 9 rounds into a from-scratch run
         "num-rounds": args.rounds, "lines-per-client": args.lines, "test-lines": args.test_lines, "val-lines": 100,
         "fraction-train": 1.0, "min-accepted": 2 * malicious + 3, "round-deadline-s": 600.0, "seed": args.seed,
         "out-dir": str(run_dir), "store": str(run_dir / "runs.db"), "robust.f": malicious,
         "max-norm-ratio": 0.0,   # the rules alone: the adaptive norm bound would reject crafted updates first
         **DEFENCES[defence],
         "attack.nodes": ",".join(f"{node}:{ATTACKS[attack]}" for node in bad)})
    started = time.time()
    report, last = simulated_run(cfg, name)
    rounds = report["rounds"]
    test = test_sets(cfg, last.charset)
    own = {node: evaluate(torch_logits_fn(last.model), last.charset, lines).cer for node, lines in test.items()}
    scores = [s for r in rounds for s in r["steps"] if s["step"] == "score"]
    honest = [s["flagged"] for s in scores if s["client"] not in bad]
    caught = [s["flagged"] for s in scores if s["client"] in bad]
    result = {"attack": attack, "defence": defence, "malicious": bad, "rounds": len(rounds),
              "own_test_cer": statistics.mean(own.values()), "per_node": own,
              "backdoor_success": backdoor_success_rate(last.model, last.charset, ConcatLines(list(test.values()))),
              "honest_flag_rate": statistics.mean(honest) if honest else None,
              "malicious_flag_rate": statistics.mean(caught) if caught else None,
              "val_cer": [r["val_cer"] for r in rounds],
              # a round as the server saw it (collect, aggregate, validate); the wall time adds Ray's start-up
              "seconds_per_round": statistics.mean(r["seconds"] + (r.get("val_seconds") or 0) for r in rounds),
              "wall_seconds": time.time() - started}
    cached.write_text(json.dumps(result, indent=1))
    return result


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One boolean per target of issue 12 (None: the runs it needs were not part of this benchmark)."""
    at = {(r["attack"], r["defence"], r["m"]): r for r in rows}
    clean = {m: at.get(("clean", "fedavg", m)) for m in MALICIOUS}

    def rel(r: dict[str, Any]) -> float:
        base = clean.get(r["m"])
        return r["own_test_cer"] / max(base["own_test_cer"], 1e-9) if base else float("nan")

    default2 = [r for r in rows if r["defence"] == "default" and r["m"] == 2 and r["attack"] != "clean"]
    backdoor, fedavg_backdoor = at.get(("backdoor", "default", 2)), at.get(("backdoor", "fedavg", 2))
    fedavg_boost = at.get(("boost", "fedavg", 2))
    clean_default = [r for r in rows if r["attack"] == "clean" and r["defence"] == "default"]
    return {
        "default_cer_within_1_1x_clean_every_attack_2_of_10":
            all(rel(r) <= 1.1 for r in default2) if default2 and clean.get(2) else None,
        "default_backdoor_success_at_most_5pct_2_of_10": backdoor["backdoor_success"] <= 0.05 if backdoor else None,
        # without it the previous check holds trivially (too few rounds to implant the backdoor at all)
        "backdoor_measurable_without_defence_2_of_10":
            fedavg_backdoor["backdoor_success"] > 0.05 if fedavg_backdoor else None,
        "fedavg_fails_on_boost_and_backdoor_2_of_10":
            (rel(fedavg_boost) > 1.1 and (fedavg_backdoor["backdoor_success"] > 0.05 or rel(fedavg_backdoor) > 1.1))
            if fedavg_boost and fedavg_backdoor and clean.get(2) else None,
        "default_clean_cost_at_most_5pct": all(rel(r) <= 1.05 for r in clean_default) if clean_default else None,
        "default_clean_flags_under_5pct_of_honest":
            all((r["honest_flag_rate"] or 0) < 0.05 for r in clean_default) if clean_default else None,
    }


def table(rows: list[dict[str, Any]]) -> None:
    clean = {r["m"]: r["own_test_cer"] for r in rows if r["attack"] == "clean" and r["defence"] == "fedavg"}

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    headers = ["attack", "malicious", "defence", "own-test CER", "x clean FedAvg", "backdoor ASR",
               "honest flagged", "malicious flagged", "s/round"]
    body = [[r["attack"], f"{len(r['malicious'])}/10", r["defence"], f"{r['own_test_cer']:.4f}",
             f"{r['own_test_cer'] / clean[r['m']]:.2f}" if r["m"] in clean else "-", pct(r["backdoor_success"]),
             pct(r["honest_flag_rate"]), pct(r["malicious_flag_rate"]), r["seconds_per_round"]] for r in rows]
    print_table(headers, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--lines", type=int, default=16, help="lines-per-client: a branch of size k has k times as many")
    parser.add_argument("--test-lines", type=int, default=50, help="test lines per node")
    parser.add_argument("--start", choices=["scratch", "warm"], default="scratch",
                        help="from scratch, or from a mini model past CTC's blank plateau (tests/data)")
    parser.add_argument("--malicious", default="1,2", help="numbers of malicious nodes of 10 (1 and/or 2)")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--defences", default=",".join(DEFENCES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fl-robust"), help="run folders and the run cache")
    parser.add_argument("--cached-only", action="store_true",
                        help="run nothing: tabulate the runs of the grid already in the cache")
    args = parser.parse_args()
    counts = [int(m) for m in args.malicious.split(",")]
    attacks = [a.strip() for a in args.attacks.split(",")]
    defences = [d.strip() for d in args.defences.split(",")]
    unknown = [a for a in attacks if a not in ATTACKS] + [d for d in defences if d not in DEFENCES] + \
        [str(m) for m in counts if m not in MALICIOUS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    out = (args.out / f"{args.start}-r{args.rounds}-l{args.lines}-t{args.test_lines}-s{args.seed}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = [("clean", "fedavg")] + [(a, d) for a in attacks for d in defences if (a, d) != ("clean", "fedavg")]
    if args.cached_only:
        plan_m = [(a, d, m) for m in counts for a, d in plan if (out / f"{run_name(a, d, m)}.json").is_file()]
    else:
        plan_m = [(a, d, m) for m in counts for a, d in plan]
    rows = [{**run_one(attack, defence, m, args, out), "m": m} for attack, defence, m in plan_m]
    table(rows)
    result = {"federation": FEDERATION, "start": args.start, "rounds": args.rounds, "lines": args.lines,
              "test_lines": args.test_lines, "seed": args.seed, "defences": {d: DEFENCES[d] for d in defences},
              "attacks": {a: ATTACKS[a] for a in attacks}, "rows": rows, "checks": checks(rows),
              "command": " ".join(["bench/fl_robust.py", *sys.argv[1:]])}
    path = write_result("fl_robust", result)
    print(json.dumps(result["checks"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
