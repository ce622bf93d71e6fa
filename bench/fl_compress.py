"""Benchmark: update compression in the federation (issue 11).

Runs the three-organisation federation on Flower's simulation engine once per compression
setting and seed, and prints and writes bench/results/fl_compress.json (fl_compress_warm.json
with `--start warm`: the mini federation from a model past CTC's blank plateau;
fl_compress_base.json for `--federation three-orgs`, from the shipped base model):

- bytes up per client per round, as serialized on the wire (the reply's protobuf size);
- the final (last round's) model's mean CER on each organisation's own test set and on the
  other organisations' test sets;
- rounds until the server's validation CER first reaches the dense run's final validation CER
  (same seed); and the local epochs trained until then;
- the server's validation CER at the start, after round 1 and at the end (from a trained model:
  how far fine-tuning moves it off the general reading the validation mix measures).

Settings: dense fp32, fp16, int8 (per-tensor scale), Top-10% and Top-1% with and without error
feedback (their kept values sent as fp16), and periodic synchronisation: 3 local epochs between
uploads for a third of the rounds (the same local compute as 1 epoch per round). The `(SGD global)`
rows repeat Top-K with SGD clients (momentum 0.9) and k of all tensors together, against dense
SGD; the table's last columns are the share of the delta's squared norm Top-K kept and the
validation CER medians (start / round 1 / end). Every setting
runs with each seed; the table shows the median and [min, max] over seeds. Runs are cached in
the --out folder, so an interrupted benchmark resumes where it stopped.

    .venv/bin/python bench/fl_compress.py [--federation three-orgs-mini|three-orgs] [--rounds 24] [--lines 160]
        [--start scratch|warm (three-orgs-mini; three-orgs starts from the base model)] [--seeds 0,1,2]
        [--out DIR] [--only NAME,...] [--sgd-lr RATE] [--result NAME] [--reuse bench/results/fl_compress.json]

`--reuse` takes the runs an earlier result file recorded (same federation, rounds, lines and
test lines) instead of running them again. Bytes are compared on the mean per client and round
(a warm-up's denser first rounds count).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import (WARM_MINI, cached, print_table, result_name, simulated_run, spread, starting_weights,
                     write_json, write_result)

from fedocr.federated.sim.baselines import own_and_others_cer, test_sets
from fedocr.federated.config import SCRATCH_LR, SGD_FINETUNE_LR, SGD_SCRATCH_LR, FlConfig
from fedocr.model.shipped import base_checkpoint

THREE_ORGS = 3  # both federations here: three organisations, every one sampled each round
TOP_K_VALUES = {"compress.quantize": "fp16"}  # Top-K rows send their kept values as float16
SETTINGS: dict[str, dict[str, Any]] = {
    "dense fp32": {},
    "fp16": {"compress.quantize": "fp16"},
    "int8": {"compress.quantize": "int8"},
    "top-10% + EF": {"compress.top-k": 0.1, **TOP_K_VALUES},
    "top-10% no EF": {"compress.top-k": 0.1, "compress.error-feedback": False, **TOP_K_VALUES},
    "top-1% + EF": {"compress.top-k": 0.01, **TOP_K_VALUES},
    "top-1% no EF": {"compress.top-k": 0.01, "compress.error-feedback": False, **TOP_K_VALUES},
    # Deep Gradient Compression's warm-up: the kept share falls geometrically to k over W rounds.
    "top-10% + EF + warm-up 3": {"compress.top-k": 0.1, "compress.warmup-rounds": 3, **TOP_K_VALUES},
    "top-1% + EF + warm-up 2": {"compress.top-k": 0.01, "compress.warmup-rounds": 2, **TOP_K_VALUES},
    "sync every 3 epochs": {"sync": 3},
}
# Top-K with the client optimizer it was made for. AdamW scales every coordinate's step to about
# its rate, so a local round moves all weights alike and the largest 10% hold little of the
# delta; SGD's delta is heavy-tailed (the top-k step records the share it kept as
# `kept_energy`). These rows compare with dense SGD, and keep k of all tensors together.
SGD = {"client-optimizer": "sgd"}  # at --sgd-lr


def sgd_top_k(k: float, error_feedback: bool = True) -> dict[str, Any]:
    return {**SGD, "compress.top-k": k, "compress.scope": "global", **TOP_K_VALUES,
            **({} if error_feedback else {"compress.error-feedback": False})}


SETTINGS |= {
    "dense fp32 (SGD)": SGD,
    "top-10% + EF (SGD global)": sgd_top_k(0.1),
    "top-10% no EF (SGD global)": sgd_top_k(0.1, error_feedback=False),
    "top-1% + EF (SGD global)": sgd_top_k(0.01),
    "top-1% no EF (SGD global)": sgd_top_k(0.01, error_feedback=False),
}


def setting_for(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """A setting's run-config overrides, with the SGD rows' rate from --sgd-lr."""
    setting = dict(SETTINGS[name])
    if setting.get("client-optimizer") == "sgd":
        setting["lr"] = args.sgd_lr
    return setting


def reference(name: str) -> str:
    """The dense run a setting is compared with: the same client optimizer, uncompressed."""
    return "dense fp32 (SGD)" if SETTINGS[name].get("client-optimizer") == "sgd" else "dense fp32"


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("%", "pct").replace("+", "plus").replace(",", "")


def stem(name: str, seed: int, args: argparse.Namespace) -> str:
    """A run's name in the cache; SGD rows carry their rate, so a rate search shares one --out."""
    rate = f"-lr{args.sgd_lr:g}" if SETTINGS[name].get("client-optimizer") == "sgd" else ""
    return f"{slug(name)}{rate}-s{seed}"


def run_config(name: str, seed: int, args: argparse.Namespace, out: Path) -> FlConfig:
    overrides = setting_for(name, args)
    sync = int(overrides.pop("sync", 1))
    base = args.start == "base"
    run_dir = out / stem(name, seed, args)
    initial = str(base_checkpoint()) if base else str(WARM_MINI) if args.start == "warm" else "scratch"
    return FlConfig.from_run_config(
        {"federation": args.federation, "charset": "default" if base else "mini",
         "initial-model": initial, "num-rounds": args.rounds // sync,
         # the warm model is 9 rounds into a from-scratch run: it keeps the from-scratch rate
         **({"lr": SCRATCH_LR} if args.start == "warm" else {}),
         "local-epochs": float(sync), "lines-per-client": args.lines, "test-lines": args.test_lines, "val-lines": 100,
         "fraction-train": 1.0, "min-accepted": 2, "round-deadline-s": 600.0, "seed": seed,
         "out-dir": str(run_dir), "store": str(run_dir / "runs.db"), **overrides})


def cache_key(name: str, cfg: FlConfig, args: argparse.Namespace) -> dict[str, Any]:
    """What a run depends on besides its seed: its setting, the budget, and the weights and rate it starts from."""
    return {**setting_for(name, args), "federation": args.federation, "start": args.start, "rounds": cfg.num_rounds,
            "lines": args.lines, "test_lines": args.test_lines, "initial": starting_weights(cfg), "lr": cfg.local_lr()}


def run_one(name: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One federation with one setting and seed (cached as out/STEM.json with what it depends on)."""
    cfg = run_config(name, seed, args, out)
    return cached(out / f"{stem(name, seed, args)}.json", cache_key(name, cfg, args), lambda: federate(name, cfg))


def federate(name: str, cfg: FlConfig) -> dict[str, Any]:
    started = time.time()
    report, last = simulated_run(cfg, f"{name} s{cfg.seed}")
    rounds = report["rounds"]
    test = test_sets(cfg, last.charset)
    scores = {org: own_and_others_cer(last.model, last.charset, test, org) for org in test}
    up = [c["bytes_up"] for r in rounds for c in r["clients"] if c["accepted"]]
    return {"setting": name, "seed": cfg.seed, "rounds": len(rounds), "local_epochs": cfg.local_epochs,
            "bytes_up_per_client_round": statistics.median(up), "bytes_up_total": sum(up),
            "bytes_up_mean_per_client_round": statistics.mean(up),
            "bytes_down_per_client_round": statistics.median(c["bytes_down"] for r in rounds for c in r["clients"]),
            "kept_energy": kept_energy(rounds),
            "val_cer": [r["val_cer"] for r in rounds], "start_val_cer": start_val_cer(rounds),
            "own_test_cer": statistics.mean(s[0] for s in scores.values()),
            "others_test_cer": statistics.mean(s[1] for s in scores.values()),
            "per_org": {org: {"own": s[0], "others": s[1]} for org, s in scores.items()},
            "seconds": time.time() - started}


def start_val_cer(rounds: list[dict[str, Any]]) -> float | None:
    """The starting model's validation CER: what round 1's commit step compared its candidate with
    (None when round 1 formed no candidate)."""
    return next((s["committed_cer"] for s in rounds[0]["steps"] if s["step"] == "commit"), None)


def kept_energy(rounds: list[dict[str, Any]]) -> float | None:
    """Median over client-rounds of the share of the delta's squared norm that Top-K kept."""
    shares = [s["kept_energy"] for r in rounds for s in r.get("steps", []) if s["step"] == "top-k" and "kept_energy" in s]
    return statistics.median(shares) if shares else None


def mean_bytes_up(run: dict[str, Any]) -> float:
    """Bytes up per accepted client-round, averaged over the run (older records: from the total)."""
    if "bytes_up_mean_per_client_round" in run:
        return float(run["bytes_up_mean_per_client_round"])
    return run["bytes_up_total"] / (run["rounds"] * THREE_ORGS)


def seed_cache(result_file: Path, args: argparse.Namespace, out: Path) -> int:
    """Write the runs an earlier result recorded into the run cache, when its settings match."""
    earlier = json.loads(result_file.read_text())
    # three-orgs always started from the base model; results before 4129edc recorded it as "scratch"
    start = "base" if earlier.get("federation") == "three-orgs" else earlier.get("start", "scratch")
    same = (earlier.get("federation"), start, earlier.get("rounds_at_1_epoch"),
            earlier.get("lines"), earlier.get("test_lines"))
    if same != (args.federation, args.start, args.rounds, args.lines, args.test_lines):
        raise SystemExit(f"bench: {result_file} was run with other settings {same}")
    written = 0
    for name, results in earlier.get("runs", {}).items():
        setting = setting_for(name, args) if name in SETTINGS else None
        if setting is None or earlier.get("settings", {}).get(name, SETTINGS[name]) != setting:
            continue  # the setting's meaning changed since, or it ran at another --sgd-lr
        for run in results:
            path = out / f"{stem(name, run['seed'], args)}.json"
            key = cache_key(name, run_config(name, run["seed"], args, out), args)
            if "settings" in run and run["settings"] != json.loads(json.dumps(key)):
                continue  # recorded with other starting weights or rate (runs from before 33ee4b4 carry no key)
            if not path.is_file():
                write_json(path, {**run, "settings": key})
                written += 1
    return written


def rounds_to_reach(val_cer: list[float], target: float) -> int | None:
    return next((i + 1 for i, cer in enumerate(val_cer) if cer <= target), None)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        dense_name = reference(name)
        dense = {r["seed"]: r for r in runs[dense_name]}
        reach = [rounds_to_reach(r["val_cer"], dense[r["seed"]]["val_cer"][-1]) for r in results]
        epochs = [None if n is None else n * r["local_epochs"] for n, r in zip(reach, results)]

        rows[name] = {"bytes_up_per_client_round": spread([r["bytes_up_per_client_round"] for r in results]),
                      "bytes_up_mean_per_client_round": spread([mean_bytes_up(r) for r in results]),
                      "bytes_up_total": spread([r["bytes_up_total"] for r in results]),
                      "own_test_cer": spread([r["own_test_cer"] for r in results]),
                      "others_test_cer": spread([r["others_test_cer"] for r in results]),
                      "rounds_to_dense_final_val_cer": spread(reach), "local_epochs_to_dense_final_val_cer":
                          spread(epochs), "rounds": results[0]["rounds"], "local_epochs": results[0]["local_epochs"],
                      "never_reached": sum(n is None for n in reach), "compared_with": dense_name}
        # how far round 1 moved the model off general reading (runs before bfaf35e lack the start)
        rows[name]["val_cer_start"] = spread([r.get("start_val_cer") for r in results])
        rows[name]["val_cer_round_1"] = spread([r["val_cer"][0] for r in results])
        rows[name]["val_cer_final"] = spread([r["val_cer"][-1] for r in results])
        energy = [r["kept_energy"] for r in results if r.get("kept_energy") is not None]
        if energy:
            rows[name]["kept_energy"] = spread(energy)
        dense_row = rows.get(dense_name)
        if dense_row:
            rows[name]["bytes_ratio_vs_dense"] = (dense_row["bytes_up_mean_per_client_round"]["median"]
                                                  / rows[name]["bytes_up_mean_per_client_round"]["median"])
            # Paired by seed: relative change of this setting's mean own-test CER against the dense run's.
            rel = [r["own_test_cer"] / max(dense[r["seed"]]["own_test_cer"], 1e-9) - 1 for r in results]
            rows[name]["relative_own_cer_change"] = spread(rel)
    return rows


def checks(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def ok(name: str, factor: float, loss: float) -> bool:
        r = rows[name]
        return r["bytes_ratio_vs_dense"] >= factor and r["relative_own_cer_change"]["median"] <= loss

    # None: the settings a target needs were not run (every seed) in this benchmark.
    # One set of checks per client optimizer (the AdamW keys keep their first names).
    out: dict[str, Any] = {}
    for suffix, tag in (("", ""), (" (SGD global)", "_sgd_global")):
        top10, top1 = f"top-10% + EF{suffix}", f"top-1% + EF{suffix}"
        top10_no, top1_no = f"top-10% no EF{suffix}", f"top-1% no EF{suffix}"
        out[f"top10_ef_10x_fewer_bytes_within_5pct_cer{tag}"] = ok(top10, 10, 0.05) if top10 in rows else None
        out[f"top1_ef_50x_fewer_bytes_within_15pct_cer{tag}"] = ok(top1, 50, 0.15) if top1 in rows else None
        out[f"error_feedback_better_at_1pct{tag}"] = None
        if {top10, top10_no} <= rows.keys():
            ef, no = rows[top10]["own_test_cer"], rows[top10_no]["own_test_cer"]
            out[f"error_feedback_better_at_10pct_every_seed{tag}"] = all(a < b for a, b in zip(ef["values"], no["values"]))
        if {top1, top1_no} <= rows.keys():
            ef, no = rows[top1]["own_test_cer"], rows[top1_no]["own_test_cer"]
            out[f"error_feedback_better_at_1pct{tag}"] = ef["median"] < no["median"]
            out[f"error_feedback_better_at_1pct_every_seed{tag}"] = all(a < b for a, b in zip(ef["values"], no["values"]))
    if {"dense fp32", "dense fp32 (SGD)"} <= rows.keys():  # what choosing SGD costs before any compression
        adamw, sgd = rows["dense fp32"]["own_test_cer"], rows["dense fp32 (SGD)"]["own_test_cer"]
        out["dense_sgd_vs_dense_adamw_own_cer"] = sgd["median"] / max(adamw["median"], 1e-9)
    return out


def table(rows: dict[str, dict[str, Any]]) -> None:
    def fmt(cell: dict[str, Any], digits: int = 4) -> str:
        if cell["median"] is None:
            return "never"
        m, lo, hi = cell["median"], cell["min"], cell["max"]
        return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if isinstance(m, float) else f"{m} [{lo}, {hi}]"

    headers = ["setting", "rounds x epochs", "KB up/client/round", "x fewer", "own-test CER", "rel. to dense",
               "others'-test CER", "rounds to dense final", "energy kept", "val CER start/r1/final"]
    body = []
    for name, r in rows.items():
        body.append([name, f"{r['rounds']} x {r['local_epochs']:g}",
                     f"{r['bytes_up_per_client_round']['median'] / 1e3:.1f}",
                     f"{r.get('bytes_ratio_vs_dense', float('nan')):.1f}", fmt(r["own_test_cer"]),
                     fmt(r["relative_own_cer_change"], 2) if "relative_own_cer_change" in r else "-",
                     fmt(r["others_test_cer"]), fmt(r["rounds_to_dense_final_val_cer"], 0)
                     + (f" ({r['never_reached']} never)" if r["never_reached"] else ""),
                     fmt(r["kept_energy"], 2) if "kept_energy" in r else "-",
                     "/".join("-" if r[k]["median"] is None else f"{r[k]['median']:.4f}"
                              for k in ("val_cer_start", "val_cer_round_1", "val_cer_final"))])
    print_table(headers, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--federation", choices=["three-orgs-mini", "three-orgs"], default="three-orgs-mini")
    parser.add_argument("--start", choices=["scratch", "warm", "base"],
                        help="three-orgs-mini from scratch (default) or from a model past the blank plateau "
                             "(tests/data); three-orgs always from the shipped base model")
    parser.add_argument("--rounds", type=int, default=24, help="rounds at 1 local epoch (sync-3 runs a third)")
    parser.add_argument("--lines", type=int, default=160, help="training lines per organisation")
    parser.add_argument("--test-lines", type=int, default=200)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", help="comma-separated setting names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fl-compress"), help="run folders and the run cache")
    parser.add_argument("--sgd-lr", type=float, help=f"the SGD rows' local rate (momentum 0.9; default: fedocr's "
                        f"SGD rates, {SGD_FINETUNE_LR:g} from the base model, {SGD_SCRATCH_LR:g} for the mini model "
                        "from scratch or warm, which keeps the from-scratch rate)")
    parser.add_argument("--result", type=result_name,
                        help="name of the results JSON in bench/results (default: fl_compress, fl_compress_warm or "
                             "fl_compress_base by federation and start)")
    parser.add_argument("--reuse", type=Path, help="an earlier result file whose recorded runs are taken as they are")
    args = parser.parse_args()
    if args.federation == "three-orgs" and args.start not in (None, "base"):
        parser.error("three-orgs starts from the shipped base model (its full vocabulary): --start base or none")
    if args.federation == "three-orgs-mini" and args.start == "base":
        parser.error("three-orgs-mini has the mini vocabulary: --start scratch or warm")
    args.start = args.start or ("base" if args.federation == "three-orgs" else "scratch")
    if args.sgd_lr is None:
        args.sgd_lr = SGD_FINETUNE_LR if args.start == "base" else SGD_SCRATCH_LR
    elif not args.sgd_lr > 0:
        parser.error("--sgd-lr must be positive")
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SETTINGS)
    for dense in sorted({reference(n) for n in names} - set(names), reverse=True):
        names.insert(0, dense)  # every comparison is against the dense run of its optimizer
    variant = args.federation + ("-warm" if args.start == "warm" else "")
    out = (args.out / variant).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        print(f"reusing {seed_cache(args.reuse, args, out)} run(s) recorded in {args.reuse}")
    runs = {name: [run_one(name, seed, args, out) for seed in seeds] for name in names}
    rows = summarise(runs)
    table(rows)
    result = {"federation": args.federation, "start": args.start, "seeds": seeds, "rounds_at_1_epoch": args.rounds, "lines": args.lines,
              "test_lines": args.test_lines, "settings": {n: setting_for(n, args) for n in names}, "rows": rows,
              "checks": checks(rows), "runs": runs,
              "command": " ".join(["bench/fl_compress.py", *sys.argv[1:]])}
    names = {"three-orgs-mini": "fl_compress", "three-orgs-mini-warm": "fl_compress_warm", "three-orgs": "fl_compress_base"}
    path = write_result(args.result if args.result else names[variant], result)
    print(json.dumps(result["checks"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
