"""Run stores for the dashboard tests, written through the real RunStore API (no federation runs)."""
from __future__ import annotations

from pathlib import Path

from fedocr.federated.pipeline.types import StepRecord
from fedocr.federated.runs.store import ClientRecord, RoundRecord, RunStore

CLIENTS = ("hospital", "bank", "school")
POISON_REASON = "update L2 norm 9.9e+03 above the bound 1e+03"


def round_record(n: int, contribution: bool = True, rolled_back: bool = False) -> RoundRecord:
    """Round `n` of a three-organisation run: the school's update is rejected in every round, and
    (with `contribution`) each accepted client has a contribution record."""
    clients = [ClientRecord("hospital", "1", True, examples=800, loss=1.0 / n, update_norm=2.0, bytes_up=1_000_000,
                            bytes_down=1_000_000, train_seconds=4.0),
               ClientRecord("bank", "2", True, examples=600, loss=1.2 / n, update_norm=2.5, bytes_up=1_000_000,
                            bytes_down=1_000_000, train_seconds=3.0),
               ClientRecord("school", "3", False, POISON_REASON, examples=700, bytes_down=1_000_000)]
    steps = [StepRecord("check", "school", {"rejected": POISON_REASON}),
             StepRecord("score", "bank", {"norm": 2.5, "clip": 1.0, "weight": 0.4, "contribution": 0.4, "cosine": -0.2,
                                          "verdict": "opposed", "flagged": True}),
             StepRecord("dp-noise", "*", {"epsilon": 0.5 * n, "delta": 1e-5, "noise_multiplier": 1.1,
                                          "target_epsilon": 8.0})]
    if contribution:
        steps += [StepRecord("contribution", "hospital", {"loo": 0.02, "shapley": 0.03, "shapley_ci": [0.02, 0.04],
                                                          "shapley_se": 0.005, "samples": 40}),
                  StepRecord("contribution", "bank", {"loo": 0.01, "shapley": 0.01, "shapley_ci": [0.0, 0.02],
                                                      "shapley_se": 0.005, "samples": 40}),
                  StepRecord("contribution", "*", {"method": "gtg-shapley"})]
    return RoundRecord(round=n, seconds=10.0, sampled=3, accepted=2, applied=not rolled_back, train_seconds=7.0,
                       overhead_seconds=1.5, val_cer=0.5 / n, val_loss=2.0 / n, lr=3e-3, epsilon=0.5 * n,
                       note="rolled back: validation CER rose" if rolled_back else None, clients=clients, steps=steps)


def write_run(path: Path, run_id: str = "run1", rounds: int = 2, out_dir: Path | None = None, **kwargs: bool) -> Path:
    with RunStore(path) as store:
        store.start_run(run_id, "demo", {"num_rounds": rounds, "aggregate": "all", "steps": {"robust.rule": "median"}},
                        "three-orgs", str(out_dir) if out_dir else None)
        for n in range(1, rounds + 1):
            store.record_round(run_id, round_record(n, **kwargs))
    return path


def add_round(path: Path, run_id: str, n: int, **kwargs: bool) -> None:
    with RunStore(path) as store:
        store.record_round(run_id, round_record(n, **kwargs))
