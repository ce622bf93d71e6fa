"""Benchmark: what differential privacy costs and what it buys (issue 14).

Record level (DP-SGD in each node's local training, `dp.level = "record"`): the three-organisation
federation on Flower's simulation engine for epsilon in {inf, 8, 3, 1} at delta 1e-5 (the noise
multiplier calibrated so the planned rounds end at the target), canaries planted in the bank's
training lines (`canary.org = bank`, or `--canary-org`; each secret `canary.repeats` times). For each run:

- final mean CER of the last round's model on each organisation's own test lines;
- the privacy audit of that model (`fedocr fl audit`): membership-inference AUC (loss threshold,
  training vs held-out lines, mean over nodes; 0.5 is chance) and the mean exposure in bits of
  the planted canaries, beside never-planted controls (the audit's chance level), each on the raw
  loss and calibrated by the starting model's loss (both models are public: the attacker has them).
  The checks take the strongest attack: DP must hold against both, the plain run is exposed by either;
- the CER of the planted lines themselves under the starting model and the final one (how much
  loss training could take off them);
- the epsilon each node's ledger reached, and seconds per round.

Client level (DP-FedAvg, `dp.level = "client"`) needs many clients: bench/fl_dp_clients.py
measures it on `many-clients-mini` (100 nodes).
Secure aggregation and homomorphic encryption are measured by bench/fl_secure.py; their checks here
are read from its JSON (as the 100-client one is from fl_dp_clients.json).

Every setting runs with each seed; the table shows the median and [min, max] over seeds. Runs are
cached in --out, so an interrupted benchmark resumes where it stopped.

    .venv/bin/python bench/fl_privacy.py [--federation three-orgs-mini] [--rounds 4] [--lines 200]
        [--local-epochs 1] [--canaries 4x30] [--canary-org bank|hospital|school] [--lr R]
        [--dp-batch-size B] [--dp-train all|sequence|head]
        [--seeds 0,1,2] [--epsilons inf,8,3,1] [--out DIR] [--tag T]

Settings other than the defaults go with a --tag, which names their results file
(bench/results/fl_privacy_T.json) and their run cache, so they never overwrite the defaults' figures.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

from _common import (RESULTS, WARM_MINI, cached, print_table, refuse_to_replace, simulated_run, spread,
                     starting_weights, write_result)

from fedocr.data.organisations import get_federation
from fedocr.federated.config import SCRATCH_LR, FlConfig
from fedocr.federated.pipeline.privacy import DP_TRAIN
from fedocr.federated.sim.audit import audit_run
from fedocr.federated.sim.baselines import own_and_others_cer, test_sets
from fedocr.model import load_checkpoint
from fedocr.model.shipped import base_checkpoint

DELTA = 1e-5
CANARY_ORG = "bank"   # the default; every results file before --canary-org planted there


def canaries(args: argparse.Namespace) -> dict[str, Any]:
    count, _, repeats = args.canaries.partition("x")
    return {"canary.org": args.canary_org, "canary.count": int(count), "canary.repeats": int(repeats)}


def settings(args: argparse.Namespace, cfg: FlConfig) -> dict[str, Any]:
    """What a cached run depends on besides its epsilon and seed: the benchmark's options and the
    starting weights."""
    return {**{k: getattr(args, k) for k in ("rounds", "lines", "local_epochs", "test_lines", "candidates",
                                             "canaries")},
            "batch_size": cfg.batch_size,   # this run's: --dp-batch-size keys only the DP runs
            **({"dp_train": cfg.steps["dp.train"]} if cfg.steps.get("dp.train", "all") != "all" else {}),
            **({"lr": args.lr} if args.lr is not None else {}),
            **({"canary_org": args.canary_org} if args.canary_org != CANARY_ORG else {}),
            "initial_model": starting_weights(cfg)}


def results_file(args: argparse.Namespace) -> str:
    name = "fl_privacy" if args.federation == "three-orgs-mini" else "fl_privacy_base"
    return f"{name}_{args.tag}" if args.tag else name


def setting(epsilon: float, args: argparse.Namespace) -> dict[str, Any]:
    if math.isinf(epsilon):
        return {}
    return {"dp.level": "record", "dp.target-epsilon": epsilon, "dp.delta": DELTA, "dp.train": args.dp_train}


def batch_size(epsilon: float, args: argparse.Namespace) -> int:
    """The batch of the run at `epsilon`: DP runs may take their own (`--dp-batch-size`), since
    DP-SGD practice tunes the batch with the budget; the run without DP keeps --batch-size."""
    return args.batch_size if math.isinf(epsilon) or args.dp_batch_size is None else args.dp_batch_size


def run_config(epsilon: float, seed: int, args: argparse.Namespace, run_dir: Path) -> FlConfig:
    base = args.federation == "three-orgs"
    return FlConfig.from_run_config(
        {"federation": args.federation, "charset": "default" if base else "mini",
         "initial-model": str(base_checkpoint()) if base else str(WARM_MINI),
         # the warm model is 9 rounds into a from-scratch run: it keeps the from-scratch rate
         **({"lr": args.lr} if args.lr is not None else {} if base else {"lr": SCRATCH_LR}),
         "num-rounds": args.rounds, "local-epochs": args.local_epochs,
         "lines-per-client": args.lines, "test-lines": args.test_lines,
         "val-lines": 100, "batch-size": batch_size(epsilon, args), "fraction-train": 1.0, "min-accepted": 2,
         "round-deadline-s": 1200.0, "seed": seed, "out-dir": str(run_dir), "store": str(run_dir / "runs.db"),
         "audit.candidates": args.candidates, **canaries(args), **setting(epsilon, args)})


def start_cer(seed: int, args: argparse.Namespace, out: Path) -> float:
    """Mean own-test CER of the starting model itself (no round trained), on the test lines the
    runs of this seed are scored on: how far each run moved from where it began (cached)."""
    cfg = run_config(math.inf, seed, args, out / f"start-s{seed}")

    def score() -> dict[str, Any]:
        start = load_checkpoint(cfg.initial_model_path())
        test = test_sets(cfg, start.charset)
        return {"seed": seed, "own_test_cer": statistics.fmean(own_and_others_cer(start.model, start.charset, test, o)[0]
                                                               for o in test)}
    return float(cached(out / f"start-s{seed}.json", settings(args, cfg), score)["own_test_cer"])


def run_one(epsilon: float, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One federation at one epsilon and seed (cached as out/eps-E-sSEED.json)."""
    label = f"eps-{epsilon:g}-s{seed}"
    cfg = run_config(epsilon, seed, args, out / label)

    def run() -> dict[str, Any]:
        started = time.time()
        report, last = simulated_run(cfg, label)
        audit = report.get("audit") or audit_run(cfg.out_path(), printer=lambda s: print(f"  [{label}] {s}"))
        test = test_sets(cfg, last.charset)
        own = {org: own_and_others_cer(last.model, last.charset, test, org)[0] for org in test}
        spent = [s["epsilon"] for r in report["rounds"] for s in r["steps"] if s["step"] == "dp-sgd"]
        exposed, calibrated = audit["canaries"]["full"], audit["canaries"].get("calibrated", {})
        planted = audit["canaries"].get("planted_lines", {})
        return {"epsilon_target": epsilon, "seed": seed, "rounds": len(report["rounds"]),
                "own_test_cer": statistics.fmean(own.values()), "per_org": own,
                "mia_auc": audit["membership"]["mean_auc"],
                "mia_auc_calibrated": audit["membership"].get("calibrated_mean_auc"),
                "canary_bits": exposed["planted_mean"], "control_bits": exposed["controls_mean"],
                "canary_bits_calibrated": calibrated.get("planted_mean"),
                "control_bits_calibrated": calibrated.get("controls_mean"),
                "canary_max_bits": exposed["max_bits"],
                "planted_cer_start": planted.get("start_cer"), "planted_cer_final": planted.get("final_cer"),
                "epsilon_spent": max(spent) if spent else None,
                "seconds_per_round": statistics.median(r["seconds"] for r in report["rounds"]),
                "seconds": time.time() - started}
    return cached(out / f"{label}.json", settings(args, cfg), run)


def summarise(runs: dict[str, list[dict[str, Any]]], start: dict[int, float]) -> dict[str, dict[str, Any]]:
    """Median and range over seeds per epsilon; CER ratios are taken seed by seed (each seed has
    its own test lines), against the run without DP and against the starting model."""
    keys = ("own_test_cer", "mia_auc", "mia_auc_calibrated", "canary_bits", "control_bits", "canary_bits_calibrated",
            "control_bits_calibrated", "planted_cer_start", "planted_cer_final", "epsilon_spent", "seconds_per_round")
    rows = {eps: {k: spread([r[k] for r in results if r.get(k) is not None]) for k in keys}
            for eps, results in runs.items()}
    no_dp = {r["seed"]: r["own_test_cer"] for r in runs.get("inf", [])}
    for eps, results in runs.items():
        if eps != "inf" and no_dp:
            rows[eps]["cer_over_no_dp"] = spread([r["own_test_cer"] / no_dp[r["seed"]] for r in results])
        if start:
            rows[eps]["cer_over_start"] = spread([r["own_test_cer"] / start[r["seed"]] for r in results])
    return rows


ATTACKS = {"raw": "", "calibrated": "_calibrated"}   # attack -> suffix of its keys in a row


def measured(row: dict[str, Any], key: str) -> list[str]:
    """The attacks a row has `key` of for every seed: a run cached before the calibrated attack
    existed leaves it out rather than deciding a check on fewer seeds."""
    seeds = len(row["own_test_cer"]["values"])
    return [a for a, suffix in ATTACKS.items() if len(row.get(key + suffix, {}).get("values", [])) == seeds]


def exposed_by(row: dict[str, Any]) -> list[str]:
    """The attacks under which the planted canaries are "above chance": more exposed (median) than
    the most exposed never-planted control of the same format, by half a bit."""
    return [a for a in measured(row, "canary_bits")
            if row["canary_bits" + ATTACKS[a]]["median"] > row["control_bits" + ATTACKS[a]]["max"] + 0.5]


def attacks_used(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which attacks the checks rest on, and which of them exposed the run without DP."""
    plain, at3 = rows.get("inf"), rows.get("3")
    return {"eps3_membership": measured(at3, "mia_auc") if at3 else [],
            "eps3_canaries": measured(at3, "canary_bits") if at3 else [],
            "non_dp_canaries_exposed_by": exposed_by(plain) if plain else []}


def checks(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One boolean per target. The strongest attack decides: DP must hold against every attack
    measured, and the run without DP counts as exposed when any one of them exposes it."""
    plain, at3 = rows.get("inf"), rows.get("3")
    if not plain or not at3:
        return {"record_eps3_cer_within_1.5x": None, "record_eps3_mia_auc_at_most_0.55": None,
                "record_eps3_no_canary_exposure_above_chance": None, "non_dp_shows_canary_exposure": None}
    return {
        "record_eps3_cer_within_1.5x": at3["cer_over_no_dp"]["median"] <= 1.5,
        "record_eps3_mia_auc_at_most_0.55": max(at3["mia_auc" + ATTACKS[a]]["median"]
                                                for a in measured(at3, "mia_auc")) <= 0.55,
        "record_eps3_no_canary_exposure_above_chance": not exposed_by(at3),
        "non_dp_shows_canary_exposure": bool(exposed_by(plain)),
        **measured_elsewhere(),
    }


def measured_elsewhere() -> dict[str, bool | None]:
    """The issue's other privacy targets, as their own benchmarks last measured them (None: not run):
    secure aggregation and HE in fl_secure.json, client-level DP on 100 clients in fl_dp_clients.json."""
    def load(name: str) -> dict[str, Any] | None:
        path = RESULTS / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    secure, clients = load("fl_secure"), load("fl_dp_clients")
    checks = (secure or {}).get("checks", {})

    def every(suffix: str) -> bool | None:
        found = [v for k, v in checks.items() if k.endswith(suffix)]
        return all(found) if found else None
    return {"secure_aggregation_within_1.5x_round_time": every("secagg_within_1_5x_plain_round_time"),
            "he_top10_within_2x_time_3x_bytes": (None if every("he_top10_within_2x_plain_round_time") is None else
                                                 bool(every("he_top10_within_2x_plain_round_time")
                                                      and every("he_top10_within_3x_plain_bytes"))),
            "client_level_measured_on_100_clients": None if clients is None else
            str(clients.get("federation", "")).startswith("many-clients")}


def table(rows: dict[str, dict[str, Any]]) -> None:
    def fmt(cell: dict[str, Any], digits: int = 4) -> str:
        if cell["median"] is None:
            return "-"
        return f"{cell['median']:.{digits}f} [{cell['min']:.{digits}f}, {cell['max']:.{digits}f}]"

    none = {"median": None}
    print_table(["epsilon (target)", "mean own CER", "x no DP", "x start", "MIA AUC (raw / calibrated)",
                 "canary bits (raw / cal.)", "control bits (raw / cal.)", "planted lines CER (start / end)",
                 "epsilon spent", "s/round"],
                [[eps, fmt(r["own_test_cer"]), fmt(r.get("cer_over_no_dp", none), 2), fmt(r.get("cer_over_start", none), 2),
                  *(f"{fmt(r[k], d)} / {fmt(r.get(f'{k}_calibrated', none), d)}"
                    for k, d in (("mia_auc", 3), ("canary_bits", 2), ("control_bits", 2))),
                  f"{fmt(r['planted_cer_start'], 3)} / {fmt(r['planted_cer_final'], 3)}",
                  fmt(r["epsilon_spent"], 2), fmt(r["seconds_per_round"], 0)]
                 for eps, r in rows.items()])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--federation", default="three-orgs-mini", choices=["three-orgs-mini", "three-orgs"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--local-epochs", type=float, default=1.0)
    parser.add_argument("--canaries", default="4x30", help="COUNTxREPEATS: secrets planted in --canary-org's "
                                                         "lines, each repeated REPEATS times")
    parser.add_argument("--canary-org", default=CANARY_ORG,
                        choices=get_federation("three-orgs").names,   # three-orgs-mini has the same nodes
                        help="the organisation whose training lines get the canaries")
    parser.add_argument("--lr", type=float, help="the clients' learning rate (default: 1e-4 from the base model, "
                                                 "the from-scratch 3e-3 from the warm mini model)")
    parser.add_argument("--test-lines", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dp-train", default="all", choices=list(DP_TRAIN),
                        help="what the DP runs train (run config dp.train): all, sequence (LSTM, skip, head) or head")
    parser.add_argument("--dp-batch-size", type=int, help="the DP runs' batch (default: --batch-size); the run "
                                                          "without DP keeps --batch-size")
    parser.add_argument("--candidates", type=int, default=200, help="|R| of the canary exposure")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epsilons", default="inf,8,3,1")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedocr-bench-privacy"))
    parser.add_argument("--tag", default="", help="names the results file and run cache of non-default settings")
    parser.add_argument("--recheck", action="store_true", help="recompute the checks of the JSON already written "
                                                               "(e.g. after fl_secure.py ran), running nothing")
    args = parser.parse_args()
    if not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", args.canaries):
        parser.error(f"--canaries {args.canaries!r}: expected COUNTxREPEATS, e.g. 4x30")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", args.tag):
        parser.error(f"--tag {args.tag!r}: letters, digits, _ and - only (it names a file)")
    if args.recheck:
        name = results_file(args)
        result = json.loads((RESULTS / f"{name}.json").read_text())
        result.pop("machine", None)
        start = dict(zip(result["seeds"], result.get("start_own_test_cer", {}).get("values", [])))
        result["rows"] = summarise(result["runs"], start)
        result["checks"], result["attacks_used"] = checks(result["rows"]), attacks_used(result["rows"])
        print(f"wrote {write_result(name, result)}")
        print(json.dumps(result["checks"], indent=1))
        return 0
    if args.lr is not None and not args.lr > 0:
        parser.error("--lr must be positive")
    if args.dp_batch_size is not None and args.dp_batch_size < 1:
        parser.error("--dp-batch-size must be positive")
    seeds = [int(s) for s in args.seeds.split(",")]
    head = {"federation": args.federation, "rounds": args.rounds, "lines": args.lines, "batch_size": args.batch_size,
            "dp_batch_size": args.dp_batch_size, "dp_train": args.dp_train, "test_lines": args.test_lines,
            "local_epochs": args.local_epochs, "lr": args.lr, "delta": DELTA,
            "canaries": canaries(args), "candidates": args.candidates, "seeds": seeds}
    # what files from before these settings were recorded ran with (lr None: the bench's default rate)
    refuse_to_replace(parser, results_file(args), head, "--tag",
                      predates={"lr": None, "local_epochs": 1.0, "candidates": 200, "dp_batch_size": None,
                                "dp_train": "all"})
    out = args.out / (args.federation + (f"-{args.tag}" if args.tag else ""))
    out.mkdir(parents=True, exist_ok=True)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    runs = {f"{eps:g}": [run_one(eps, seed, args, out) for seed in seeds] for eps in epsilons}
    start = {seed: start_cer(seed, args, out) for seed in seeds}
    rows = summarise(runs, start)
    table(rows)
    at_start = spread(list(start.values()))
    print(f"the starting model itself (no round): mean own CER {at_start['median']:.4f} "
          f"[{at_start['min']:.4f}, {at_start['max']:.4f}]")
    result = {**head, "start_own_test_cer": at_start, "rows": rows, "checks": checks(rows),
              "attacks_used": attacks_used(rows), "runs": runs}
    name = results_file(args)
    print(f"wrote {write_result(name, result)}")
    print(json.dumps(result["checks"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
