"""One simulated federation of a benchmark comparing methods over seeds: every node every round,
from the shipped base model, the warm tiny mini model of tests/data, or scratch; the command-line
options that choose it, and the folder its cached runs live in."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import WARM_MINI

from fedocr.federated.config import SCRATCH_LR, FlConfig
from fedocr.federated.sim.simulate import simulate

STARTS: dict[str, dict[str, Any]] = {
    "base": {"initial-model": "auto"}, "scratch": {"initial-model": "scratch"},
    "warm": {"initial-model": str(WARM_MINI), "lr": SCRATCH_LR, "charset": "mini"}}


def add_federation_arguments(parser: argparse.ArgumentParser, preset: str, start: str, lines: int,
                             out: Path) -> None:
    """--preset, --start, --rounds, --lines, --test-lines, --seeds and --out, with these defaults."""
    parser.add_argument("--preset", default=preset)
    parser.add_argument("--start", choices=list(STARTS), default=start,
                        help="base: the shipped model (full vocabulary); warm: the tiny mini model in tests/data")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lines", type=int, default=lines, help="lines-per-client")
    parser.add_argument("--test-lines", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=out)


def runs_folder(args: argparse.Namespace, suffix: str) -> Path:
    """Where the cached runs of these settings live (created); `suffix` names the benchmark's own."""
    out = (args.out / f"{args.preset}-{args.start}-r{args.rounds}-l{args.lines}-t{args.test_lines}{suffix}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def federation_config(args: argparse.Namespace, seed: int, run_dir: Path, settings: dict[str, Any]) -> FlConfig:
    """The run config of one benchmark federation in `run_dir`, with the method's `settings`."""
    return FlConfig.from_run_config(
        {"federation": args.preset, **STARTS[args.start], "num-rounds": args.rounds, "lines-per-client": args.lines,
         "test-lines": args.test_lines, "val-lines": 100, "fraction-train": 1.0, "min-accepted": 2,
         "round-deadline-s": 1800.0, "seed": seed, "out-dir": str(run_dir), "store": str(run_dir / "runs.db"),
         **settings})


def run_federation(args: argparse.Namespace, seed: int, run_dir: Path, settings: dict[str, Any],
                   label: str, baselines: bool = True) -> dict[str, Any]:
    """The finished run's report (with the final table unless `baselines` is off); a run that does
    not finish stops the benchmark."""
    cfg = federation_config(args, seed, run_dir, settings)
    report = simulate(cfg, baselines=baselines, printer=lambda s: print(f"  [{label}] {s}", flush=True))
    if report["status"] != "finished":
        raise SystemExit(f"bench: {label}: run {report['status']}: {report.get('error')}")
    return report
