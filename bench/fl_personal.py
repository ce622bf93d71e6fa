"""Benchmark: personalisation for very different organisations (issue 15, item 1).

Runs one federation per method and seed on Flower's simulation engine and scores each
organisation's CER on its own test lines and on the others', for

- global: FedAvg's one model (aggregate = all);
- fedper: the shared backbone with each node's own CTC head (aggregate = backbone);
- fedbn: each node's own BatchNorm layers (aggregate = fedbn);
- ditto: each node's personal model, lambda = --ditto-lambda (personal.method = ditto), trained
  --ditto-epochs passes over the node's lines a round;
- ditto-mix: the same personal model served as --ditto-mix of it plus the rest of the global model
  (personal.mix, WiSE-FT's weight-space interpolation); one column per mix in the comma list. The
  mix changes only what a node serves, not its training, so each mix re-scores the ditto run's node
  states instead of training again;
- clustered: clustered FL that finds k (cluster.method = ifca, cluster.k = 0: the round-1 updates
  split into the groups with the best silhouette, or the run stays one model), each node serving
  its cluster's model; the clusters each seed made are in the JSON's `clusters`. Each group needs
  min-accepted (2) nodes, so a three-organisation preset can never split (four-orgs only 2 + 2);
- local-only: each organisation alone, same recipe and budget (the global run's final-table
  baseline; the personalised runs skip the baselines, which would be the same models again).

A personalised model is scored as its node would serve it: its node state on the node's disk
over the run's last-round model (`sim.baselines.personal_models`, as the final table does), or
its cluster's model (`cluster-N.pt` by the report's final membership).
Prints the median and range over seeds and writes bench/results/fl_personal_PRESET_START.json (or
--result's name) with a `checks` object. Runs are cached in --out; a scored column's cache names
the run it scored, so a retrained run is scored again.

    .venv/bin/python bench/fl_personal.py [--preset four-orgs] [--rounds 5] [--lines 400]
        [--seeds 0,1,2] [--methods global,fedper,fedbn,ditto,ditto-mix,clustered]
        [--ditto-lambda 10] [--ditto-epochs 1] [--ditto-mix 0.3,0.5]
        [--start base|warm|scratch] [--out DIR] [--result NAME]

Targets: the best personalised model <= 0.8x the global model's own-test CER for every
organisation, with others'-test CER <= 1.1x the global's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from _common import cached, print_table, refuse_to_replace, result_name, spread, write_result
from _federations import add_federation_arguments, federation_config, run_federation, runs_folder

from fedocr.data.organisations import get_federation
from fedocr.federated.sim.baselines import own_and_others_cer, personal_models, test_sets
from fedocr.federated.state import ServerState
from fedocr.model import CRNN, load_checkpoint

METHODS: dict[str, dict[str, Any]] = {
    "global": {}, "fedper": {"aggregate": "backbone"}, "fedbn": {"aggregate": "fedbn"},
    "ditto": {"personal.method": "ditto"}, "ditto-mix": {"personal.method": "ditto"},
    "clustered": {"cluster.method": "ifca", "cluster.k": 0},
}
TARGETS = {"own": 0.8, "others": 1.1}   # a personalised model's CER at most this x the global model's


def columns(methods: list[str], mixes: list[float]) -> list[str]:
    """The table's model columns: each method, with ditto-mix as one column per mix."""
    return [c for m in methods for c in ([f"ditto-mix{x:g}" for x in mixes] if m == "ditto-mix" else [m])]


def column_settings(column: str, args: argparse.Namespace) -> dict[str, Any]:
    """The run-config settings of a column, with this run's Ditto parameters."""
    method = "ditto-mix" if column.startswith("ditto-mix") else column
    settings = dict(METHODS[method])
    if method.startswith("ditto"):
        settings["personal.lambda"] = args.ditto_lambda
        settings["personal.epochs"] = args.ditto_epochs
    if method == "ditto-mix":
        settings["personal.mix"] = float(column.removeprefix("ditto-mix"))
    return settings


def trained_run(method: str, seed: int, args: argparse.Namespace, out: Path) -> Path:
    """The folder of `method`'s finished federation for this seed, trained if need be. Only the
    global run trains the local-only baselines: a personalised run's would be the same models."""
    run_dir = out / f"{stem(method, args)}-s{seed}"
    report = run_dir / "report.json"
    if report.is_file() and json.loads(report.read_text())["status"] == "finished":
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)   # an interrupted run starts again
    run_federation(args, seed, run_dir, column_settings(method, args), f"{method} s{seed}",
                   baselines=method == "global")
    return run_dir


def run_one(column: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """{org: {own: {column: cer}, others: {...}}} of one column and seed, with local-only beside
    the global column's (cached under the id of the run scored, and scored again for another)."""
    run_dir = trained_run(trained_method(column), seed, args, out)
    report = json.loads((run_dir / "report.json").read_text())
    if column != "global":
        return cached(out / f"{stem(column, args)}-served-s{seed}.json", {"run_id": report["run_id"]},
                      lambda: score_served(column, run_dir, args, seed), recompute_if_changed=True)

    def from_report() -> dict[str, Any]:
        return {org: {side: {column: c[key]["federated"], "local-only": c[key]["local_only"]}
                      for side, key in (("own", "own_test_cer"), ("others", "other_test_cer"))}
                for org, c in report["final"]["clients"].items()}

    return cached(out / f"global-s{seed}.json", {"run_id": report["run_id"]}, from_report, recompute_if_changed=True)


def score_served(column: str, run_dir: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """What each node would serve in `column`, on its own test lines and the others', the way the
    final table scores it: its node state on disk over the run's last-round model (a ditto-mix
    column reads the ditto run's states at its mix), or in `clustered` its cluster's model."""
    cfg = federation_config(args, seed, run_dir, column_settings(column, args))
    orgs = list(get_federation(cfg.federation).names)
    last = ServerState.load(run_dir)   # the round the run ended at (a run may stop before --rounds)
    final = load_checkpoint(run_dir / f"round-{last.round if last else args.rounds}.pt")
    test = test_sets(cfg, final.charset)
    served = (cluster_models(run_dir, final.model, orgs) if column == "clustered"
              else personal_models(cfg, final.model, final.provenance.get("run_id")))
    scores = {org: own_and_others_cer(served[org], final.charset, test, org) for org in orgs}
    return {org: {side: {column: scores[org][i]} for i, side in enumerate(("own", "others"))} for org in orgs}


def stem(name: str, args: argparse.Namespace) -> str:
    """A run's or column's cache name: a Ditto one carries its personal epochs, unless the default 1
    (lambda names the whole run folder)."""
    return f"{name}-e{args.ditto_epochs:g}" if name.startswith("ditto") and args.ditto_epochs != 1 else name


def trained_method(column: str) -> str:
    """The method whose run a column scores (every Ditto mix scores the one Ditto run)."""
    return "ditto" if column.startswith("ditto") else column


def cluster_models(run_dir: Path, one_model: CRNN, orgs: list[str]) -> dict[str, CRNN]:
    """Each organisation's cluster model by the run's final membership; the run's last-round model
    for a node in no cluster (a run that never split has none; with every node every round, as
    here, a split run has every node in one)."""
    final = json.loads((run_dir / "report.json").read_text()).get("final") or {}
    membership: dict[str, int] = final.get("clusters", {}).get("membership") or {}
    models = {c: load_checkpoint(run_dir / f"cluster-{c}.pt").model for c in set(membership.values())}
    return {org: models[membership[org]] if org in membership else one_model for org in orgs}


def collect(cols: list[str], seeds: list[int], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """{org: {side: {kind: spread over seeds}}} with kind = each column and local-only."""
    runs = {(c, s): run_one(c, s, args, out) for c in cols for s in seeds}
    orgs = list(get_federation(args.preset).names)
    table: dict[str, Any] = {}
    for org in orgs:
        table[org] = {}
        for side in ("own", "others"):
            values = {c: [runs[(c, s)][org][side][c] for s in seeds] for c in cols}
            # local-only: the global run's baselines (same recipe and budget), one value per seed
            values["local-only"] = [runs[("global", s)][org][side]["local-only"] for s in seeds]
            table[org][side] = {k: spread(v) for k, v in values.items()}
    return table


def checks(table: dict[str, Any]) -> dict[str, Any]:
    def med(org: str, side: str, kind: str) -> float | None:
        cell = table[org][side].get(kind)
        return cell["median"] if cell else None

    present = [k for k in next(iter(table.values()))["own"] if k not in ("global", "local-only")]
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


def clusters_made(cols: list[str], seeds: list[int], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Each seed's clustered run: the clusters it made and each node's (k 1: it never split)."""
    if "clustered" not in cols:
        return {}
    made = {}
    for seed in seeds:
        final = json.loads((trained_run("clustered", seed, args, out) / "report.json").read_text()).get("final") or {}
        made[str(seed)] = {"k": final.get("clusters", {}).get("k", 1),
                           "membership": final.get("clusters", {}).get("membership")}
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_federation_arguments(parser, "four-orgs", "base", 400, Path("/tmp/fl-personal"))
    parser.add_argument("--ditto-lambda", type=float, default=0.1)
    parser.add_argument("--ditto-epochs", type=float, default=1.0, help="personal.epochs of Ditto's personal model")
    parser.add_argument("--ditto-mix", default="0.5", help="personal.mix of the ditto-mix method (a comma list)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--result", type=result_name, help="name of the results JSON in bench/results (default fl_personal_PRESET_START; "
                        "a file there from other settings or columns is not overwritten without --result)")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",")]
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown methods: {unknown}")
    if "global" not in methods:
        parser.error("--methods needs global: the targets compare with it, and its run trains the local-only models")
    mixes = [float(x) for x in args.ditto_mix.split(",")]
    if bad := [x for x in mixes if not 0 < x <= 1]:
        parser.error(f"--ditto-mix must be in (0, 1]: {bad}")
    seeds = [int(s) for s in args.seeds.split(",")]
    cols = columns(methods, mixes)
    name = args.result or f"fl_personal_{args.preset}_{args.start}".replace("-", "_")
    planned = {"preset": args.preset, "start": args.start, "rounds": args.rounds, "lines": args.lines,
               "test_lines": args.test_lines, "ditto_lambda": args.ditto_lambda, "ditto_epochs": args.ditto_epochs,
               "ditto_mix": mixes, "seeds": seeds, "methods": {c: column_settings(c, args) for c in cols}}
    if not args.result:
        refuse_to_replace(parser, name, planned, "--result",
                          predates={"ditto_epochs": 1.0})   # files from before --ditto-epochs ran with 1
    out = runs_folder(args, f"-dl{args.ditto_lambda:g}")
    table = collect(cols, seeds, args, out)
    kinds = [*cols, "local-only"]
    for side in ("own", "others"):
        print(f"\n{side}-test CER, median [min, max] over seeds {seeds}")
        print_table(["organisation", *kinds],
                    [[org, *(f"{c[k]['median']:.4f} [{c[k]['min']:.4f}, {c[k]['max']:.4f}]" for k in kinds)]
                     for org, sides in table.items() for c in [sides[side]]])
    result = {**planned, "table": table, "checks": checks(table),
              **({"clusters": made} if (made := clusters_made(cols, seeds, args, out)) else {}),
              "command": " ".join(["bench/fl_personal.py", *sys.argv[1:]])}
    path = write_result(name, result)
    print(json.dumps(result["checks"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
