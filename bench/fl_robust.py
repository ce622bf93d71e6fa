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

With --seeds, every run is made once per seed (a seed draws the data, the initial weights of a
from-scratch run and the attacks' randomness); each run is compared with the clean FedAvg run
of its own seed, and the table and `checks` give the median and range over seeds of those
ratios (`checks` on the medians, `..._every_seed` where a target must hold in every seed).

Attacks (`attack.nodes`): sign flip, boost (x `attack.scale` = 10, just under the norm bound),
Gaussian noise, free rider, two colluders, label shuffling, backdoor + boost (model replacement,
half of the attacker's lines with a digit stamped), and two stronger variants: `boost-x30` and
`backdoor-all` (every line with a digit stamped, `attack.poison-rate = 1`). The malicious nodes
are bank-2 (1 of 10) and bank-2 + school-2 (2 of 10). Defences (`robust.*`, f = the number of
malicious nodes, min-accepted = 2f + 3 so that every rule can run): FedAvg, clip to 2x the median
norm, coordinate median, trimmed mean, Multi-Krum, FLTrust (`trust`, the server's update on its 64
root lines), the default (robust.RECOMMENDED: clip, leave out colluders, trimmed mean, then again
without updates opposed to its step), `clip+trimmed+opposed` (the default before it left out
colluders) and `clip+trimmed` (before it dropped opposed updates). Every row but `default+bound`
turns the adaptive norm bound of the server's check off (`max-norm-ratio = 0`) to measure the
rules alone; `default+bound` is the recommended rule with every screen a run has by default.
Runs are cached in --out, so an interrupted benchmark resumes where it stopped.

    .venv/bin/python bench/fl_robust.py [--rounds 12] [--lines 16] [--start scratch|warm]
        [--malicious 1,2] [--attacks clean,boost,...] [--defences fedavg,default,...] [--seeds 0,1,2]
        [--out DIR] [--cached-only]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from _common import (WARM_MINI, cached, print_table, refuse_to_replace, result_name, simulated_run, spread,
                     write_result)

from fedocr.data import ConcatLines
from fedocr.federated.config import SCRATCH_LR, FlConfig
from fedocr.federated.pipeline.robust import RECOMMENDED
from fedocr.federated.sim.baselines import test_sets
from fedocr.federated.sim.poison import backdoor_success_rate
from fedocr.model import torch_logits_fn
from fedocr.train import evaluate

FEDERATION = "ten-branches-mini"
MALICIOUS = {1: ["bank-2"], 2: ["bank-2", "school-2"]}
ATTACKS = {"clean": "", "sign-flip": "sign-flip", "boost": "boost", "noise": "noise", "free-rider": "free-rider",
           "collude": "collude", "label-shuffle": "label-shuffle", "backdoor": "backdoor+boost",
           "boost-x30": "boost", "backdoor-all": "backdoor+boost"}
# Stronger attackers than the run config's defaults: a boost of 30 (a smallest branch holds 1/14 of
# the lines: 14 would replace the model, 30 overshoots it), and a backdoor on every line with a digit.
ATTACK_SETTINGS: dict[str, dict[str, Any]] = {"boost-x30": {"attack.scale": 30.0},
                                              "backdoor-all": {"attack.poison-rate": 1.0}}
DEFAULT: dict[str, Any] = {k: v for k, v in RECOMMENDED.items() if k != "robust.f"}
# the recommended rule before it left out colluders (robust.collusion-cosine, until 2026-12-05)...
BEFORE_COLLUSION: dict[str, Any] = {**DEFAULT, "robust.collusion-cosine": 0.0}
DEFENCES: dict[str, dict[str, Any]] = {
    "fedavg": {}, "clip": {"robust.clip-median": 2.0}, "median": {"robust.rule": "median"},
    "trimmed mean": {"robust.rule": "trimmed-mean"}, "multi-krum": {"robust.rule": "multi-krum"},
    "trust": {"robust.rule": "trust"},
    "default": DEFAULT,
    "clip+trimmed+opposed": BEFORE_COLLUSION,
    # ...and before it also dropped updates opposed to its step (earlier on 2026-12-05)
    "clip+trimmed": {**BEFORE_COLLUSION, "robust.drop-opposed": False},
    # the recommended rule behind every screen a run has by default (the adaptive norm bound too)
    "default+bound": {**DEFAULT, "max-norm-ratio": 10.0},
}


def run_name(attack: str, defence: str, malicious: int) -> str:
    """The run's folder and cache name. The clean FedAvg run does not depend on the number of
    malicious nodes: one run serves both."""
    name = f"{attack}-{defence}" + ("" if (attack, defence) == ("clean", "fedavg") else f"-m{malicious}")
    return name.replace(" ", "_")


def run_one(attack: str, defence: str, malicious: int, seed: int, args: argparse.Namespace,
            out: Path) -> dict[str, Any]:
    """One federation (cached as out/ATTACK-DEFENCE-mN.json with the defence's settings, which a
    cached run must match); a clean run has no malicious node."""
    name = run_name(attack, defence, malicious)
    row = cached(out / f"{name}.json", {**DEFENCES[defence], **ATTACK_SETTINGS.get(attack, {})},
                 lambda: federation(attack, defence, malicious, seed, args, out / name))
    return {**row, "honest_twin_cosine": honest_twin_cosine(out / name / "report.json", row["malicious"])}


def honest_twin_cosine(report: Path, malicious: list[str]) -> float | None:
    """The highest cosine, around the round's median, of an honest node's update to another's
    over the run (the score records of robust.collusion-cosine): how near honest branches come to
    the threshold. None when the run did not check, or its folder is gone."""
    if not report.is_file():
        return None
    rounds = json.loads(report.read_text(encoding="utf-8"))["rounds"]
    found = [s["twin_cosine"] for r in rounds for s in r["steps"]
             if s["step"] == "score" and s["client"] not in malicious and s.get("twin_cosine") is not None]
    return max(found) if found else None


def federation(attack: str, defence: str, malicious: int, seed: int, args: argparse.Namespace,
               run_dir: Path) -> dict[str, Any]:
    bad = MALICIOUS[malicious] if ATTACKS[attack] else []
    warm = args.start == "warm"
    cfg = FlConfig.from_run_config(
        {"federation": FEDERATION, "charset": "mini", "initial-model": str(WARM_MINI) if warm else "scratch",
         **({"lr": SCRATCH_LR} if warm else {}),  # the warm model is 9 rounds into a from-scratch run
         "num-rounds": args.rounds, "lines-per-client": args.lines, "test-lines": args.test_lines, "val-lines": 100,
         "fraction-train": 1.0, "min-accepted": 2 * malicious + 3, "round-deadline-s": 600.0, "seed": seed,
         "out-dir": str(run_dir), "store": str(run_dir / "runs.db"), "robust.f": malicious,
         "max-norm-ratio": 0.0,   # the rules alone: the adaptive norm bound would reject crafted updates first
         **DEFENCES[defence], **ATTACK_SETTINGS.get(attack, {}),
         "attack.nodes": ",".join(f"{node}:{ATTACKS[attack]}" for node in bad)})
    started = time.time()
    report, last = simulated_run(cfg, run_dir.name)
    rounds = report["rounds"]
    test = test_sets(cfg, last.charset)
    own = {node: evaluate(torch_logits_fn(last.model), last.charset, lines).cer for node, lines in test.items()}
    scores = [s for r in rounds for s in r["steps"] if s["step"] == "score"]
    honest = [s["flagged"] for s in scores if s["client"] not in bad]
    caught = [s["flagged"] for s in scores if s["client"] in bad]
    return {"attack": attack, "defence": defence, "malicious": bad, "rounds": len(rounds),
            "own_test_cer": statistics.mean(own.values()), "per_node": own,
            "backdoor_success": backdoor_success_rate(last.model, last.charset, ConcatLines(list(test.values()))),
            "honest_flag_rate": statistics.mean(honest) if honest else None,
            "malicious_flag_rate": statistics.mean(caught) if caught else None,
            "val_cer": [r["val_cer"] for r in rounds],
            # a round as the server saw it (collect, aggregate, validate); the wall time adds Ray's start-up
            "seconds_per_round": statistics.mean(r["seconds"] + (r.get("val_seconds") or 0) for r in rounds),
            "wall_seconds": time.time() - started}


def relative(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run with its CER as a multiple of the clean FedAvg run of the same seed (`x_clean`)."""
    clean = {r["seed"]: r["own_test_cer"] for r in rows if r["attack"] == "clean" and r["defence"] == "fedavg"}
    return [{**r, "x_clean": r["own_test_cer"] / max(clean[r["seed"]], 1e-9) if r["seed"] in clean else None}
            for r in rows]


def summary(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(attack, defence, malicious) -> median and range over seeds of each measure."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["attack"], r["defence"], r["m"]), []).append(r)
    return {key: {measure: spread([r[measure] for r in runs])
                  for measure in ("own_test_cer", "x_clean", "backdoor_success", "honest_flag_rate",
                                  "malicious_flag_rate", "honest_twin_cosine", "seconds_per_round")} | {"seeds": [r["seed"] for r in runs]}
            for key, runs in cells.items()}


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One boolean per target of issue 12 on the medians over seeds, and `..._every_seed` on each
    seed's own runs (None: the runs it needs were not part of this benchmark, or a seed lacks
    its clean FedAvg run). FedAvg "fails" on boost and backdoor when the plain attack or its
    stronger variant (boost-x30, backdoor-all) hurts it; the default must hold against both."""
    by_seed: dict[int, dict[tuple[str, str, int], dict[str, Any]]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[(r["attack"], r["defence"], r["m"])] = r
    keys = {k for runs in by_seed.values() for k in runs}

    def value(runs: dict[tuple[str, str, int], dict[str, Any]], key: tuple[str, str, int], measure: str) -> float | None:
        return runs[key][measure] if key in runs else None

    def targets(get: Callable[[tuple[str, str, int], str], float | None]) -> dict[str, bool | None]:
        """The targets on one set of figures: `get(key, measure)`, a seed's or the medians."""
        def test(key: tuple[str, str, int], measure: str, ok: Callable[[float], bool]) -> bool | None:
            found = get(key, measure)
            return None if found is None else ok(found)

        def every(tests: list[bool | None]) -> bool | None:
            return None if not tests or None in tests else all(tests)

        def any_of(attacks: tuple[str, ...], defence: str, measure: str, ok: Callable[[float], bool]) -> bool | None:
            """Whether any of these attacks (the plain one and its stronger variant) that the
            benchmark ran passes `ok`; None when it ran none of them."""
            found = [t for a in attacks if (t := test((a, defence, 2), measure, ok)) is not None]
            return any(found) if found else None

        attacked = sorted(k for k in keys if k[1] == "default" and k[2] == 2 and k[0] != "clean")
        clean_default = sorted(k for k in keys if k[0] == "clean" and k[1] == "default")
        backdoors = ("backdoor", "backdoor-all")
        measurable = any_of(backdoors, "fedavg", "backdoor_success", lambda v: v > 0.05)
        hurts = any_of(backdoors, "fedavg", "x_clean", lambda v: v > 1.1)
        boost = any_of(("boost", "boost-x30"), "fedavg", "x_clean", lambda v: v > 1.1)
        return {
            "default_cer_within_1_1x_clean_every_attack_2_of_10": every([test(k, "x_clean", lambda v: v <= 1.1)
                                                                          for k in attacked]),
            "default_backdoor_success_at_most_5pct_2_of_10":
                every([test(k, "backdoor_success", lambda v: v <= 0.05) for k in attacked if k[0] in backdoors]),
            # without it the previous check holds trivially (too few rounds to implant the backdoor at all)
            "backdoor_measurable_without_defence_2_of_10": measurable,
            "fedavg_fails_on_boost_and_backdoor_2_of_10":
                None if None in (boost, measurable, hurts) else bool(boost and (measurable or hurts)),
            "default_clean_cost_at_most_5pct": every([test(k, "x_clean", lambda v: v <= 1.05) for k in clean_default]),
            "default_clean_flags_under_5pct_of_honest":
                every([test(k, "honest_flag_rate", lambda v: v < 0.05) for k in clean_default]),
        }

    def median(key: tuple[str, str, int], measure: str) -> float | None:
        known = [v for runs in by_seed.values() if (v := value(runs, key, measure)) is not None]
        return statistics.median(known) if known else None

    per_seed = [targets(lambda key, measure, runs=runs: value(runs, key, measure)) for runs in by_seed.values()]
    result: dict[str, Any] = dict(targets(median))
    for name in result.copy():
        found = [seed[name] for seed in per_seed]
        result[f"{name}_every_seed"] = None if not found or None in found else all(found)
    return result


def table(cells: dict[tuple[str, str, int], dict[str, Any]]) -> None:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    def cell(measure: dict[str, Any], fmt: Callable[[float | None], str]) -> str:
        if measure["median"] is None:
            return "-"
        if measure["min"] == measure["max"]:
            return fmt(measure["median"])
        return f"{fmt(measure['median'])} [{fmt(measure['min'])}, {fmt(measure['max'])}]"

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    headers = ["attack", "malicious", "defence", "seeds", "own-test CER", "x clean FedAvg", "backdoor ASR",
               "honest flagged", "malicious flagged", "s/round"]
    body = [[attack, f"{m}/10", defence, len(c["seeds"]), cell(c["own_test_cer"], lambda v: f"{v:.4f}"),
             cell(c["x_clean"], ratio), cell(c["backdoor_success"], pct), cell(c["honest_flag_rate"], pct),
             cell(c["malicious_flag_rate"], pct), f"{c['seconds_per_round']['median']:.1f}"]
            for (attack, defence, m), c in cells.items()]
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
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (each run once per seed)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fl-robust"), help="run folders and the run cache")
    parser.add_argument("--result", type=result_name,
                        help="name of the results JSON in bench/results (default fl_robust; a file there from other "
                             "settings is not overwritten without --result)")
    parser.add_argument("--cached-only", action="store_true",
                        help="run nothing: tabulate the runs of the grid already in the cache")
    args = parser.parse_args()
    counts = [int(m) for m in args.malicious.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    attacks = [a.strip() for a in args.attacks.split(",")]
    defences = [d.strip() for d in args.defences.split(",")]
    unknown = [a for a in attacks if a not in ATTACKS] + [d for d in defences if d not in DEFENCES] + \
        [str(m) for m in counts if m not in MALICIOUS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    planned = {"federation": FEDERATION, "start": args.start, "rounds": args.rounds, "lines": args.lines,
               "test_lines": args.test_lines}
    if not args.result:
        refuse_to_replace(parser, "fl_robust", planned, "--result")
    plan = [("clean", "fedavg")] + [(a, d) for a in attacks for d in defences if (a, d) != ("clean", "fedavg")]
    rows = []
    for seed in seeds:   # seed by seed, so an interrupted benchmark has whole seeds to show
        out = (args.out / f"{args.start}-r{args.rounds}-l{args.lines}-t{args.test_lines}-s{seed}").resolve()
        out.mkdir(parents=True, exist_ok=True)
        plan_m = [(a, d, m) for m in counts for a, d in plan
                  if not args.cached_only or (out / f"{run_name(a, d, m)}.json").is_file()]
        rows += [{**run_one(attack, defence, m, seed, args, out), "m": m, "seed": seed}
                 for attack, defence, m in plan_m]
    if not rows:
        parser.error(f"no cached runs of this grid under {args.out}")
    rows = relative(rows)
    cells = summary(rows)
    table(cells)
    result = {**planned, "seeds": seeds, "defences": {d: DEFENCES[d] for d in defences},
              "attacks": {a: {"attack.nodes kind": ATTACKS[a], **ATTACK_SETTINGS.get(a, {})} for a in attacks},
              "rows": rows,
              "summary": [{"attack": a, "defence": d, "malicious": m, **c} for (a, d, m), c in cells.items()],
              "checks": checks(rows),
              "command": " ".join(["bench/fl_robust.py", *sys.argv[1:]])}
    path = write_result(args.result or "fl_robust", result)
    print(json.dumps(result["checks"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
