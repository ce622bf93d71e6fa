"""Benchmark: three organisations federated vs alone vs pooled (issue 4).

Runs `fedocr fl simulate` (Flower's simulation engine) on three synthetic organisations, then
prints and writes bench/results/fl_three_orgs.json (fl_three_orgs_mini.json for the mini
federation): per organisation the CER of its local-only,
the federated and the centralized model on its own test set and on the other organisations'
test sets; bytes up/down per round; wall time per round split into local training, other client
work (data, model set-up) and framework overhead (transport, scheduling, process start-up).

`--federation three-orgs` (the default when models/base.pt exists) fine-tunes the shipped base
model on the hospital, bank and school presets (full vocabulary); `--federation three-orgs-mini`
trains a tiny CRNN from scratch (22-character vocabulary, each organisation writing its own
hanzi), which a laptop CPU trains in minutes.

    .venv/bin/python bench/fl_three_orgs.py [--federation three-orgs|three-orgs-mini] [--rounds 10]
        [--epochs 2] [--lines 320] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedocr.federated.config import FlConfig
from fedocr.model.shipped import base_checkpoint
from fedocr.federated.sim.simulate import simulate

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("local_only", "federated", "centralized")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=float, default=2.0, help="local epochs per round")
    parser.add_argument("--lines", type=int, default=320, help="training lines per organisation")
    parser.add_argument("--test-lines", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.0, help="0: 3e-3 from scratch, 1e-4 from the base model")
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="client optimizer")
    parser.add_argument("--lr-decay", choices=["none", "cosine"], default="cosine",
                        help="cosine: local rate decays over the rounds (and over the baselines' training)")
    parser.add_argument("--server-momentum", type=float, default=0.0, help="FedAvgM momentum (0: plain FedAvg)")
    parser.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    parser.add_argument("--federation", choices=["three-orgs", "three-orgs-mini"],
                        default="three-orgs" if (base_checkpoint() or Path()).is_file() else "three-orgs-mini")
    args = parser.parse_args()
    base = args.federation == "three-orgs"
    if base and not (base_checkpoint() or Path()).is_file():
        parser.error("three-orgs starts from the base model, and no models/base.pt was found")
    results = RESULTS / ("fl_three_orgs.json" if base else "fl_three_orgs_mini.json")
    out = (args.out or Path(tempfile.mkdtemp(prefix="fl-bench-"))).resolve()
    cfg = FlConfig(federation=args.federation, charset="default" if base else "mini",
                   initial_model=str(base_checkpoint()) if base else "scratch", model_size="tiny", num_rounds=args.rounds,
                   local_epochs=args.epochs, lr=args.lr, batch_size=16,
                   client_optimizer=args.optimizer, server_momentum=args.server_momentum, lr_decay=args.lr_decay,
                   fraction_train=1.0, min_accepted=2, lines_per_client=args.lines, test_lines=args.test_lines,
                   val_lines=100, round_deadline_s=600, out_dir=str(out), store=str(out / "runs.db"))
    started = time.time()
    report = simulate(cfg, printer=lambda s: print(s, flush=True))
    total = time.time() - started
    if report["status"] != "finished":
        print(f"bench: run {report['status']}: {report.get('error')}", file=sys.stderr)
        return 1
    final = report["final"]
    rows = {org: {"own": c["own_test_cer"], "others": c["other_test_cer"]} for org, c in final["clients"].items()}
    rounds = [{"round": r["round"], "wall_s": r["seconds"], "train_s": r["train_seconds"],
               "client_other_s": None, "overhead_s": r["overhead_seconds"], "validation_s": r["val_seconds"],
               "bytes_up": sum(c["bytes_up"] for c in r["clients"]),
               "bytes_down": sum(c["bytes_down"] for c in r["clients"]), "val_cer": r["val_cer"],
               "accepted": r["accepted"], "sampled": r["sampled"], "lr": r.get("lr")} for r in report["rounds"]]
    for r in rounds:
        r["client_other_s"] = max(0.0, r["wall_s"] - r["train_s"] - r["overhead_s"])
        r["overhead_share"] = r["overhead_s"] / r["wall_s"] if r["wall_s"] else None
    mean = final["mean_own_test_cer"]
    checks = {
        "federated_vs_centralized_mean_cer": mean["federated"] / max(mean["centralized"], 1e-9),
        "federated_within_1.1x_centralized": mean["federated"] <= 1.1 * mean["centralized"],
        "others_cer_federated_over_local_only": {o: r["others"]["federated"] / max(r["others"]["local_only"], 1e-9)
                                                 for o, r in rows.items()},
        "others_cer_at_most_half_of_local_only": all(r["others"]["federated"] <= 0.5 * r["others"]["local_only"]
                                                     for r in rows.values()),
        "mean_overhead_share": statistics.mean(r["overhead_share"] for r in rounds),
        "overhead_under_30pct_every_round": all(r["overhead_share"] < 0.30 for r in rounds),
    }
    result = {"federation": cfg.federation, "start": "base model" if base else "scratch (tiny CRNN, mini vocabulary)",
              "config": cfg.to_dict(), "machine_note": "2 shared CPU cores, 2 Ray actors, 1 torch thread each",
              "cer": rows, "mean_own_test_cer": mean, "rounds": rounds, "checks": checks,
              "baseline_train_seconds": final["baseline_train_seconds"], "total_seconds": total,
              "command": " ".join(["bench/fl_three_orgs.py", *sys.argv[1:]])}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(table(result))
    print(f"wrote {results}")
    return 0


def table(result: dict) -> str:
    lines = [f"federation {result['federation']}, start: {result['start']}", "",
             f"{'organisation':<12} | {'own: local':>10} {'fed':>7} {'central':>8} | {'others: local':>13} {'fed':>7} {'central':>8}"]
    for org, r in result["cer"].items():
        lines.append(f"{org:<12} | {r['own']['local_only']:>10.4f} {r['own']['federated']:>7.4f} "
                     f"{r['own']['centralized']:>8.4f} | {r['others']['local_only']:>13.4f} "
                     f"{r['others']['federated']:>7.4f} {r['others']['centralized']:>8.4f}")
    m = result["mean_own_test_cer"]
    lines.append(f"{'mean':<12} | {m['local_only']:>10.4f} {m['federated']:>7.4f} {m['centralized']:>8.4f} |")
    lines += ["", f"{'round':>5} {'wall s':>7} {'train s':>8} {'client s':>9} {'overhead s':>11} {'ovh %':>6} "
                  f"{'val s':>6} {'MB up':>7} {'MB down':>8} {'val CER':>8}"]
    for r in result["rounds"]:
        lines.append(f"{r['round']:>5} {r['wall_s']:>7.1f} {r['train_s']:>8.1f} {r['client_other_s']:>9.1f} "
                     f"{r['overhead_s']:>11.1f} {100 * r['overhead_share']:>6.1f} {r['validation_s']:>6.1f} "
                     f"{r['bytes_up'] / 1e6:>7.2f} {r['bytes_down'] / 1e6:>8.2f} "
                     f"{'n/a' if r['val_cer'] is None else format(r['val_cer'], '.4f'):>8}")
    c = result["checks"]
    lines += ["", f"federated / centralized mean CER: {c['federated_vs_centralized_mean_cer']:.2f} (target <= 1.1)",
              "others' CER, federated / local-only: " + ", ".join(f"{o} {v:.2f}" for o, v in
                                                                c["others_cer_federated_over_local_only"].items())
              + " (target <= 0.5)",
              f"mean framework overhead: {100 * c['mean_overhead_share']:.1f}% of round wall time (target < 30%)"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
