"""Benchmark: personalisation for very different organisations (issue 15, item 1).

Runs one federation per method and seed on Flower's simulation engine, with the final table
(`baselines`): each organisation's CER on its own test lines and on the others', for

- global: FedAvg's one model (aggregate = all);
- fedper: the shared backbone with each node's own CTC head (aggregate = backbone);
- fedbn: each node's own BatchNorm layers (aggregate = fedbn);
- ditto: each node's personal model, lambda = --ditto-lambda (personal.method = ditto);
- ditto-mix: the same personal model served as --ditto-mix of it plus the rest of the global model
  (personal.mix, WiSE-FT's weight-space interpolation);
- local-only: each organisation alone, same recipe and budget (the final table's baseline).

A personalised model is scored as its node would serve it (node state on the node's disk, read
by the final table). Prints the median and range over seeds and writes
bench/results/fl_personal.json with a `checks` object. Runs are cached in --out.

    .venv/bin/python bench/fl_personal.py [--preset four-orgs] [--rounds 5] [--lines 400]
        [--seeds 0,1,2] [--methods global,fedper,fedbn,ditto,ditto-mix] [--ditto-lambda 10] [--ditto-mix 0.5]
        [--start base|warm|scratch] [--out DIR]

Targets: the best personalised model <= 0.8x the global model's own-test CER for every
organisation, with others'-test CER <= 1.1x the global's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import print_table, spread, write_result
from _federations import add_federation_arguments, run_federation, runs_folder

METHODS: dict[str, dict[str, Any]] = {
    "global": {}, "fedper": {"aggregate": "backbone"}, "fedbn": {"aggregate": "fedbn"},
    "ditto": {"personal.method": "ditto"}, "ditto-mix": {"personal.method": "ditto"},
}
PERSONAL = ("fedper", "fedbn", "ditto", "ditto-mix")
TARGETS = {"own": 0.8, "others": 1.1}   # a personalised model's CER at most this x the global model's


def method_settings(method: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(the name its cached runs go under, its run-config settings) with this run's Ditto parameters."""
    settings = dict(METHODS[method])
    if method.startswith("ditto"):
        settings["personal.lambda"] = args.ditto_lambda
    if method == "ditto-mix":
        settings["personal.mix"] = args.ditto_mix
        return f"ditto-mix{args.ditto_mix:g}", settings
    return method, settings


def run_one(method: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """{org: {own: {kind: cer}, others: {kind: cer}}} of one federation (cached)."""
    stem, settings = method_settings(method, args)
    cached = out / f"{stem}-s{seed}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    run_dir = out / f"{stem}-s{seed}"
    report = run_federation(args, seed, run_dir, settings, f"{stem} s{seed}")
    clients = report["final"]["clients"]
    model_kind = "personalized" if method in PERSONAL else "federated"
    result = {org: {"own": {method: c["own_test_cer"][model_kind], "local-only": c["own_test_cer"]["local_only"]},
                    "others": {method: c["other_test_cer"][model_kind],
                               "local-only": c["other_test_cer"]["local_only"]}}
              for org, c in clients.items()}
    cached.write_text(json.dumps(result, indent=1))
    return result


def collect(methods: list[str], seeds: list[int], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """{org: {side: {kind: spread over seeds}}} with kind = each method and local-only."""
    runs = {(m, s): run_one(m, s, args, out) for m in methods for s in seeds}
    orgs = list(next(iter(runs.values())))
    kinds = [*methods, "local-only"]
    table: dict[str, Any] = {}
    for org in orgs:
        table[org] = {}
        for side in ("own", "others"):
            values = {k: [runs[(m, s)][org][side][k] for s in seeds for m in methods if k in runs[(m, s)][org][side]]
                      for k in kinds}
            # local-only is measured in every run of a seed (same recipe): one value per seed
            values["local-only"] = [runs[(methods[0], s)][org][side]["local-only"] for s in seeds]
            table[org][side] = {k: spread(v) for k, v in values.items()}
    return table


def checks(table: dict[str, Any]) -> dict[str, Any]:
    def med(org: str, side: str, kind: str) -> float | None:
        cell = table[org][side].get(kind)
        return cell["median"] if cell else None

    present = [k for k in PERSONAL if all(med(o, "own", k) is not None for o in table)]
    if not present or any(med(o, "own", "global") is None for o in table):
        return {"best_personal_own_at_most_0_8x_global": None, "its_others_at_most_1_1x_global": None}
    best = {o: min(present, key=lambda k: med(o, "own", k)) for o in table}   # type: ignore[arg-type, return-value]

    def within(org: str, side: str, kind: str) -> bool:
        """`kind`'s median CER on `side` within the target's multiple of the global model's."""
        return med(org, side, kind) <= TARGETS[side] * med(org, side, "global")  # type: ignore[operator]

    return {
        "best_personal_own_at_most_0_8x_global": all(within(o, "own", best[o]) for o in table),
        "its_others_at_most_1_1x_global": all(within(o, "others", best[o]) for o in table),
        "best_method_per_org": best,
        # One method to recommend: at most 0.8x the global's own-test CER and 1.1x its others' everywhere.
        "methods_meeting_both_targets_for_every_org": [k for k in present
                                                       if all(within(o, side, k) for o in table for side in TARGETS)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_federation_arguments(parser, "four-orgs", "base", 400, Path("/tmp/fl-personal"))
    parser.add_argument("--ditto-lambda", type=float, default=0.1)
    parser.add_argument("--ditto-mix", type=float, default=0.5, help="personal.mix of the ditto-mix method")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",")]
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown methods: {unknown}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = runs_folder(args, f"-dl{args.ditto_lambda:g}")
    table = collect(methods, seeds, args, out)
    kinds = [*methods, "local-only"]
    for side in ("own", "others"):
        print(f"\n{side}-test CER, median [min, max] over seeds {seeds}")
        print_table(["organisation", *kinds],
                    [[org, *(f"{c[k]['median']:.4f} [{c[k]['min']:.4f}, {c[k]['max']:.4f}]" for k in kinds)]
                     for org, sides in table.items() for c in [sides[side]]])
    result = {"preset": args.preset, "start": args.start, "rounds": args.rounds, "lines": args.lines,
              "test_lines": args.test_lines, "ditto_lambda": args.ditto_lambda, "ditto_mix": args.ditto_mix,
              "seeds": seeds, "methods": {m: method_settings(m, args)[1] for m in methods}, "table": table,
              "checks": checks(table),
              "command": " ".join(["bench/fl_personal.py", *sys.argv[1:]])}
    path = write_result("fl_personal", result)
    print(json.dumps(result["checks"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
