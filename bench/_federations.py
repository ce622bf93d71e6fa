"""One simulated federation of a benchmark comparing methods over seeds: every node every round,
from the shipped base model, the warm tiny mini model of tests/data, or scratch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fedocr.federated.config import SCRATCH_LR, FlConfig
from fedocr.federated.sim.simulate import simulate

WARM_MINI = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny-mini-warm.pt"
STARTS: dict[str, dict[str, Any]] = {
    "base": {"initial-model": "auto"}, "scratch": {"initial-model": "scratch"},
    "warm": {"initial-model": str(WARM_MINI), "lr": SCRATCH_LR, "charset": "mini"}}


def run_federation(preset: str, start: str, rounds: int, lines: int, test_lines: int, seed: int, run_dir: Path,
                   settings: dict[str, Any], label: str) -> dict[str, Any]:
    """The finished run's report (with the final table); a run that does not finish stops the benchmark."""
    cfg = FlConfig.from_run_config(
        {"federation": preset, **STARTS[start], "num-rounds": rounds, "lines-per-client": lines,
         "test-lines": test_lines, "val-lines": 100, "fraction-train": 1.0, "min-accepted": 2,
         "round-deadline-s": 1800.0, "seed": seed, "out-dir": str(run_dir), "store": str(run_dir / "runs.db"),
         **settings})
    report = simulate(cfg, printer=lambda s: print(f"  [{label}] {s}", flush=True))
    if report["status"] != "finished":
        raise SystemExit(f"bench: {label}: run {report['status']}: {report.get('error')}")
    return report
