"""Take the dashboard screenshots in docs/ (runs list, a run mid-training, the contribution panel).

The store holds the real runs of any run stores given with --copy (their rounds as recorded;
--contribution-run pictures the contribution panel of one of them) and one demonstration run written through the RunStore API: ten branches, twelve of twenty
rounds done, with a sign-flipping node (bank-2), a free rider (school-4, a handful of lines),
a dropped node, a rolled-back round, record-level DP and contribution records whose values are
made up for the picture (named "demo" in the run's name). The dashboard runs as
`fedocr fl dashboard` on a loopback port and Debian's headless Chromium takes the pictures.

    .venv/bin/python scripts/dashboard_screenshots.py [--copy /path/runs.db ...] [--out docs]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from fedocr.federated.pipeline.types import StepRecord
from fedocr.federated.runs.store import ClientRecord, RoundRecord, RunStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _common import fedocr_server  # noqa: E402  (the benchmarks' server helper: start, wait, stop by PID)

BRANCHES = {"hospital-1": 900, "hospital-2": 700, "hospital-3": 650, "bank-1": 800, "bank-2": 750, "bank-3": 600,
            "school-1": 700, "school-2": 650, "school-3": 500, "school-4": 12}
MEANS = {"hospital-1": 0.011, "hospital-2": 0.008, "hospital-3": 0.007, "bank-1": 0.010, "bank-2": -0.006,
         "bank-3": 0.006, "school-1": 0.009, "school-2": 0.007, "school-3": 0.005, "school-4": 0.0002}


def demo_round(n: int, rng: random.Random) -> RoundRecord:
    clients, steps = [], []
    for name, lines in BRANCHES.items():
        if n == 5 and name == "school-3":
            clients.append(ClientRecord(name, "9", False, "dropped: no reply within the 300 s deadline (straggler, "
                                                          "crash or disconnect)", bytes_down=3_400_000))
            continue
        poisoned = name == "bank-2"
        norm = rng.uniform(8, 12) if poisoned else rng.uniform(1.0, 2.2) * 0.93 ** n
        rejected = poisoned and n % 3 == 0
        clients.append(ClientRecord(name, str(len(clients)), not rejected,
                                    f"update L2 norm {norm:.3g} above the bound 8 (check)" if rejected else None,
                                    examples=lines, loss=rng.uniform(0.6, 1.1) * 0.9 ** n, update_norm=norm,
                                    bytes_up=3_400_000, bytes_down=3_400_000, train_seconds=lines / 60 + rng.uniform(1, 3)))
        steps.append(StepRecord("dp-sgd", name, {"epsilon": round(0.55 * n ** 0.5, 4), "delta": 1e-5,
                                                 "target_epsilon": 8.0, "noise_multiplier": 1.1}))
        if rejected:
            steps.append(StepRecord("check", name, {"rejected": f"update L2 norm {norm:.3g} above the bound 8"}))
            continue
        cosine = rng.uniform(-0.6, -0.3) if poisoned else rng.uniform(0.3, 0.7)
        steps.append(StepRecord("score", name, {"norm": norm, "clip": min(1.0, 3 / norm), "weight": 0.1,
                                                "contribution": 0.1 * cosine, "cosine": cosine,
                                                "verdict": "opposed" if poisoned else "kept", "flagged": poisoned}))
        value = rng.gauss(MEANS[name] * 0.93 ** n, 0.0015)
        steps.append(StepRecord("contribution", name, {"loo": value * rng.uniform(0.7, 1.1), "shapley": value,
                                                       "shapley_ci": [value - 0.0025, value + 0.0025], "samples": 64}))
    steps.append(StepRecord("contribution", "*", {"method": "both", "utility": "val_cer", "estimator": "gtg",
                                                   "permutations": 64}))
    rolled_back = n == 7
    cer = 0.62 * 0.87 ** n + 0.08
    return RoundRecord(round=n, seconds=48 + rng.uniform(-4, 4), sampled=10, accepted=sum(c.accepted for c in clients),
                       applied=not rolled_back, train_seconds=39 + rng.uniform(-3, 3), overhead_seconds=4 + rng.uniform(0, 2),
                       val_cer=cer * (1.04 if rolled_back else 1), val_loss=cer * 3.6, lr=3e-3 * (0.5 + 0.5 * 0.97 ** n),
                       epsilon=round(0.55 * n ** 0.5, 4),
                       note="rolled back: candidate CER rose above the committed model's (+0.005 tolerance)"
                       if rolled_back else None, clients=clients, steps=steps)


def copy_runs(source: Path, dest: RunStore) -> None:
    """Every run of another store, rounds and all, through the store's own API."""
    with RunStore.open_readonly(source) as src:
        for listed in src.runs():
            run = src.run(listed["run_id"])
            assert run is not None
            dest.start_run(run["run_id"], run["name"], run["config"], run["federation"], run["out_dir"])
            for record in src.rounds(run["run_id"]):
                dest.record_round(run["run_id"], record)
            dest.finish_run(run["run_id"], run["status"], run["final"], run.get("error"))


def build(path: Path, copies: list[Path]) -> str:
    rng = random.Random(16)
    with RunStore(path) as store:
        for source in copies:
            copy_runs(source, store)
        config = {"num_rounds": 20, "federation": "ten-branches", "aggregate": "all", "lr": 3e-3,
                  "steps": {"dp.level": "record", "dp.target-epsilon": 8.0, "dp.clip": 1.0, "robust.rule": "fedavg",
                            "robust.clip-median": 2.0, "rollback.enabled": True}}
        store.start_run("d3m0a1b2c3d4", "ten-branches demo", config, "ten-branches", None)
        for n in range(1, 13):
            store.record_round("d3m0a1b2c3d4", demo_round(n, rng))
    return "d3m0a1b2c3d4"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy", type=Path, action="append", default=[], help="a real run store to include")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--contribution-run", metavar="RUN_ID",
                        help="the run whose contribution panel is pictured (default: the demonstration run)")
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="fedocr-shots-")) / "runs.db"
    run_id = build(store, args.copy)
    with fedocr_server("fl", "dashboard", "--store", str(store)) as (base, _):
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="en-US")
                page.goto(base + "/dashboard")
                page.wait_for_selector("#runs tbody tr")
                page.screenshot(path=str(args.out / "dashboard-runs.png"))
                page.goto(f"{base}/dashboard#run={run_id}")
                page.wait_for_selector("#round-clients tbody tr")
                page.wait_for_timeout(500)
                page.screenshot(path=str(args.out / "dashboard-run.png"), full_page=True)
                if args.contribution_run:
                    page.goto(f"{base}/dashboard#run={args.contribution_run}")
                    page.wait_for_selector("#contribution tbody tr")
                    page.wait_for_timeout(500)
                page.locator("#contribution-panel").screenshot(path=str(args.out / "dashboard-contribution.png"))
            finally:
                browser.close()
    print(f"wrote {', '.join(str(args.out / n) for n in ('dashboard-runs.png', 'dashboard-run.png', 'dashboard-contribution.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
