"""Benchmark: three organisations federated vs alone vs pooled (issue 4).

Runs `fedocr fl simulate` (Flower's simulation engine) on three synthetic organisations, then
prints and writes bench/results/fl_three_orgs.json (fl_three_orgs_mini.json for the mini
federation): per organisation the CER of its local-only,
the federated and the centralized model on its own test set and on the other organisations'
test sets; bytes up/down per round; wall time per round split into local training, other client
work (data, model set-up) and framework overhead (transport, scheduling, process start-up).
One run per seed (`--seeds`, default 0,1,2); the table and `checks` use the median over seeds,
with the range beside it, and each seed's run is kept under `runs`.

`--federation three-orgs` (the default when models/base.pt exists) fine-tunes the shipped base
model on the hospital, bank and school presets (full vocabulary); `--federation three-orgs-mini`
trains a tiny CRNN from scratch (22-character vocabulary, each organisation writing its own
hanzi), which a laptop CPU trains in minutes.

    .venv/bin/python bench/fl_three_orgs.py [--federation three-orgs|three-orgs-mini] [--rounds 10]
        [--epochs 2] [--lines 320] [--seeds 0,1,2] [--out DIR]
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cached, spread, starting_weights, write_result
from fedocr.federated.config import FlConfig
from fedocr.federated.sim.simulate import simulate
from fedocr.model.shipped import base_checkpoint

KINDS = ("local_only", "federated", "centralized")


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    """One federation (with its baselines) at one seed, cached as out/seed-N.json so an
    interrupted benchmark resumes where it stopped."""
    base = args.federation == "three-orgs"
    run_dir = out / f"seed-{seed}"
    cfg = FlConfig(federation=args.federation, charset="default" if base else "mini",
                   initial_model=str(base_checkpoint()) if base else "scratch", model_size="tiny", num_rounds=args.rounds,
                   local_epochs=args.epochs, lr=args.lr, batch_size=16,
                   client_optimizer=args.optimizer, server_momentum=args.server_momentum, lr_decay=args.lr_decay,
                   fraction_train=1.0, min_accepted=2, lines_per_client=args.lines, test_lines=args.test_lines,
                   val_lines=100, round_deadline_s=600, seed=seed, out_dir=str(run_dir), store=str(run_dir / "runs.db"))
    # What the run depends on besides its seed: the whole config (its folders aside) and the weights it starts from.
    settings = {**{k: v for k, v in cfg.to_dict().items() if k not in ("seed", "out_dir", "store")},
                "initial_model": starting_weights(cfg), "lr": cfg.local_lr()}  # a rate of 0 resolves by optimizer

    def run() -> dict[str, Any]:
        started = time.time()
        report = simulate(cfg, printer=lambda s: print(f"[seed {seed}] {s}", flush=True))
        if report["status"] != "finished":
            raise SystemExit(f"bench: seed {seed}: run {report['status']}: {report.get('error')}")
        final = report["final"]
        rounds = [{"round": r["round"], "wall_s": r["seconds"], "train_s": r["train_seconds"],
                   "overhead_s": r["overhead_seconds"], "validation_s": r["val_seconds"],
                   "bytes_up": sum(c["bytes_up"] for c in r["clients"]),
                   "bytes_down": sum(c["bytes_down"] for c in r["clients"]), "val_cer": r["val_cer"],
                   "accepted": r["accepted"], "sampled": r["sampled"], "lr": r.get("lr")} for r in report["rounds"]]
        for r in rounds:
            r["client_other_s"] = max(0.0, r["wall_s"] - r["train_s"] - r["overhead_s"])
            r["overhead_share"] = r["overhead_s"] / r["wall_s"] if r["wall_s"] else None
        config = cfg.to_dict()
        # What the run used where the config's zero or default defers to the starting point.
        config["lr"] = cfg.local_lr()
        if base:
            config["model_size"] = "the initial model's"
        return {"seed": seed, "config": config,
                "cer": {org: {"own": c["own_test_cer"], "others": c["other_test_cer"]}
                        for org, c in final["clients"].items()},
                "mean_own_test_cer": final["mean_own_test_cer"], "rounds": rounds,
                "baseline_train_seconds": final["baseline_train_seconds"], "total_seconds": time.time() - started}
    return cached(out / f"seed-{seed}.json", settings, run)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over seeds of every CER, ratio and round figure the table and checks use."""
    orgs = list(runs[0]["cer"])
    cer = {org: {side: {kind: spread([r["cer"][org][side][kind] for r in runs]) for kind in KINDS}
                 for side in ("own", "others")} for org in orgs}
    mean = {kind: spread([r["mean_own_test_cer"][kind] for r in runs]) for kind in KINDS}
    fed_vs_central = spread([r["mean_own_test_cer"]["federated"] / max(r["mean_own_test_cer"]["centralized"], 1e-9)
                             for r in runs])
    others_ratio = {org: spread([r["cer"][org]["others"]["federated"] / max(r["cer"][org]["others"]["local_only"], 1e-9)
                                 for r in runs]) for org in orgs}
    all_rounds = [x for r in runs for x in r["rounds"]]
    overhead = spread([x["overhead_share"] for x in all_rounds])
    checks = {
        "federated_vs_centralized_mean_cer": fed_vs_central["median"],
        "federated_within_1.1x_centralized": fed_vs_central["median"] <= 1.1,
        "federated_within_1.1x_centralized_every_seed": fed_vs_central["max"] <= 1.1,
        "others_cer_federated_over_local_only": {o: v["median"] for o, v in others_ratio.items()},
        "others_cer_at_most_half_of_local_only": all(v["median"] <= 0.5 for v in others_ratio.values()),
        "mean_overhead_share": statistics.mean(x["overhead_share"] for x in all_rounds),
        "overhead_under_30pct_every_round": overhead["max"] < 0.30,
    }
    return {"cer": cer, "mean_own_test_cer": mean, "federated_vs_centralized": fed_vs_central,
            "others_federated_over_local_only": others_ratio,
            "round_seconds": spread([x["wall_s"] for x in all_rounds]),
            "train_seconds": spread([x["train_s"] for x in all_rounds]),
            "overhead_share": overhead,
            "mb_up_per_round": spread([x["bytes_up"] / 1e6 for x in all_rounds]),
            "checks": checks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=float, default=2.0, help="local epochs per round")
    parser.add_argument("--lines", type=int, default=320, help="training lines per organisation")
    parser.add_argument("--test-lines", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.0, help="0: 3e-3 from scratch, 1e-4 from the base model (SGD: 0.1, 0.01)")
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="client optimizer")
    parser.add_argument("--lr-decay", choices=["none", "cosine"], default="cosine",
                        help="cosine: local rate decays over the rounds (and over the baselines' training)")
    parser.add_argument("--server-momentum", type=float, default=0.0, help="FedAvgM momentum (0: plain FedAvg)")
    parser.add_argument("--seeds", default="0,1,2", help="one run per seed (node data, sampling, init); "
                                                         "the table is the median and [min, max] over them")
    parser.add_argument("--out", type=Path, help="run folder, and the cache that lets a stopped bench resume "
                                                 "(default: a temporary one)")
    parser.add_argument("--federation", choices=["three-orgs", "three-orgs-mini"],
                        default="three-orgs" if (base_checkpoint() or Path()).is_file() else "three-orgs-mini")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if re.fullmatch(r"[0-9]+(,[0-9]+)*", args.seeds) else []
    if not seeds or len(set(seeds)) < len(seeds):
        parser.error(f"--seeds {args.seeds!r}: expected distinct comma-separated integers, e.g. 0,1,2")
    base = args.federation == "three-orgs"
    if base and not (base_checkpoint() or Path()).is_file():
        parser.error("three-orgs starts from the base model, and no models/base.pt was found")
    out = (args.out or Path(tempfile.mkdtemp(prefix="fl-bench-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = [run_seed(args, seed, out) for seed in seeds]
    summary = summarise(runs)
    result = {"federation": args.federation, "start": "base model" if base else "scratch (tiny CRNN, mini vocabulary)",
              "seeds": seeds, "config": runs[0]["config"],
              "machine_note": "2 shared CPU cores, 2 Ray actors, 1 torch thread each",
              **summary, "runs": runs, "total_seconds": time.time() - started,
              "command": " ".join(["bench/fl_three_orgs.py", *sys.argv[1:]])}
    path = write_result("fl_three_orgs" if base else "fl_three_orgs_mini", result)
    print(table(result))
    print(f"wrote {path}")
    return 0


def table(result: dict[str, Any]) -> str:
    def cell(x: dict[str, Any]) -> str:
        return f"{x['median']:.4f} [{x['min']:.4f}, {x['max']:.4f}]"

    seeds = ", ".join(map(str, result["seeds"]))
    lines = [f"federation {result['federation']}, start: {result['start']}; median [min, max] over seeds {seeds}", "",
             "organisation | own: local-only | federated | centralized | others: local-only | federated | centralized"]
    for org, r in result["cer"].items():
        lines.append(" | ".join([org, *(cell(r[side][kind]) for side in ("own", "others") for kind in KINDS)]))
    m = result["mean_own_test_cer"]
    lines.append(" | ".join(["mean", *(cell(m[kind]) for kind in KINDS)]))
    f, o = result["federated_vs_centralized"], result["others_federated_over_local_only"]
    rs, ovh, up = result["round_seconds"], result["overhead_share"], result["mb_up_per_round"]
    lines += ["", f"federated / centralized mean CER: {f['median']:.2f} [{f['min']:.2f}, {f['max']:.2f}] (target <= 1.1)",
              "others' CER, federated / local-only: " + ", ".join(f"{org} {v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]"
                                                                for org, v in o.items()) + " (target <= 0.5)",
              f"round wall time {rs['median']:.1f} s [{rs['min']:.1f}, {rs['max']:.1f}]; framework overhead "
              f"{100 * ovh['median']:.1f}% [{100 * ovh['min']:.1f}, {100 * ovh['max']:.1f}] of it (target < 30%); "
              f"{up['median']:.1f} MB up per round"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
