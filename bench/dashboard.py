"""Benchmark: what the federation dashboard costs (issue 16).

A run store with a 1,000-round, 100-client run (per round and client: the client row and the
check, score and contribution step records a robust run with contribution writes; about 370,000
rows) is served by `fedocr fl dashboard` on a loopback port. Measured:

- API latency of what the run page asks for at first (the run's detail and its latest round),
  and of the runs list: median over --repeat requests, and the very first request after the
  server starts (it totals the 1,000 rounds once; later requests only add new rounds);
- page load in headless Chromium (Debian's): from navigation to the latest round's client table
  drawn, median over a few loads (skipped when chromium or Playwright is missing);
- event latency: from `record_round` returning in the writer to the `round` event reaching a
  client of /api/runs/{id}/events, median over --events new rounds.

- the federation's round time with and without the dashboard open: for each seed the same
  federation (three-orgs-mini from scratch, `fedocr fl simulate` on Flower's simulation engine,
  --fl-rounds rounds) runs twice, once alone and once with `fedocr fl dashboard` serving its store
  and the run's page open in headless Chromium (following each round live), in turn and in
  alternating order. Per run: the median of its rounds' seconds; per seed: the ratio with/without;
  reported as median and range over the seeds. The check holds when the median ratio is <= 1.05.

    .venv/bin/python bench/dashboard.py [--rounds 1000] [--clients 100] [--repeat 7] [--events 5]
                                        [--fl-seeds 0 1 2] [--fl-rounds 6]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from _common import fedocr_server, print_table, spread, write_result

from fedocr.federated.pipeline.types import StepRecord
from fedocr.federated.runs.store import ClientRecord, RoundRecord, RunStore

RUN = "bench"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
SLOWDOWN_TOLERANCE = 1.05   # "no measurable slowdown": rounds at most 5% slower with the page open


def synthetic_round(n: int, clients: int, rng: random.Random) -> RoundRecord:
    """A plausible round: 1 in 20 clients dropped, 1 in 15 rejected, the rest scored and valued."""
    rows, steps = [], []
    for i in range(clients):
        name = f"branch-{i:03d}"
        draw = rng.random()
        if draw < 0.05:
            rows.append(ClientRecord(name, str(i), False, "dropped: no reply within the 300 s deadline", bytes_down=2_000_000))
            continue
        accepted = draw > 0.12
        norm = rng.uniform(0.5, 3.0) if accepted else rng.uniform(50, 5000)
        rows.append(ClientRecord(name, str(i), accepted, None if accepted else f"update L2 norm {norm:.3g} above the bound",
                                 examples=rng.randint(20, 800), loss=rng.uniform(0.2, 2.0), update_norm=norm,
                                 bytes_up=2_000_000, bytes_down=2_000_000, train_seconds=rng.uniform(1, 9)))
        steps.append(StepRecord("check", name, {"norm": norm} if accepted else {"rejected": "norm above the bound"}))
        if accepted:
            cosine = rng.uniform(-0.3, 0.9)
            steps.append(StepRecord("score", name, {"norm": norm, "clip": 1.0, "weight": 1 / clients, "contribution": 0.01,
                                                    "cosine": cosine, "verdict": "opposed" if cosine < 0 else "kept",
                                                    "flagged": cosine < 0}))
            value = rng.gauss(0.0005, 0.001)
            steps.append(StepRecord("contribution", name, {"loo": value, "shapley": value,
                                                           "shapley_ci": [value - 0.0004, value + 0.0004], "samples": 50}))
    cer = 0.05 + 0.6 * 0.995 ** n
    return RoundRecord(round=n, seconds=30.0, sampled=clients, accepted=sum(r.accepted for r in rows), applied=True,
                       train_seconds=24.0, overhead_seconds=3.0, val_cer=cer, val_loss=cer * 4, lr=3e-3, clients=rows,
                       steps=steps)


def build_store(path: Path, rounds: int, clients: int) -> float:
    rng = random.Random(0)
    start = time.perf_counter()
    with RunStore(path) as store:
        store.start_run(RUN, "bench-1000x100", {"num_rounds": rounds, "aggregate": "all", "steps": {}}, "many-clients",
                        None)
        for n in range(1, rounds + 1):
            store.record_round(RUN, synthetic_round(n, clients, rng))
    return time.perf_counter() - start


def first_ms(client: httpx.Client, url: str) -> float:
    start = time.perf_counter()
    client.get(url).raise_for_status()
    return (time.perf_counter() - start) * 1000


def median_ms(client: httpx.Client, url: str, repeat: int) -> float:
    client.get(url).raise_for_status()   # warm: imports, SQLite page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        client.get(url).raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def page_load_ms(base: str, last_round: int, loads: int) -> float | None:
    """Navigation to the latest round's client table drawn, in Debian's headless Chromium."""
    if not browser_available():
        return None
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            for _ in range(loads + 1):   # the first load warms the browser's cache of the static files
                page.goto("about:blank")
                start = time.perf_counter()
                page.goto(f"{base}/dashboard#run={RUN}")
                page.wait_for_selector(f"#rounds tbody tr[data-round='{last_round}']")
                page.wait_for_selector("#round-clients tbody tr")
                times.append(time.perf_counter() - start)
        finally:
            browser.close()
    return statistics.median(times[1:]) * 1000


def browser_available() -> bool:
    return importlib.util.find_spec("playwright") is not None and CHROMIUM.exists()


def federation_seconds_per_round(work: Path, seed: int, rounds: int, watched: bool) -> dict[str, float]:
    """One three-orgs-mini federation from scratch: the median of its rounds' seconds; `watched`:
    with the dashboard serving its store and the run's page open in Chromium until the run ends,
    and the CPU seconds the dashboard server and the browser used meanwhile (`watcher_cpu_s`)."""
    out = work / f"fl-seed{seed}-{'watched' if watched else 'alone'}"
    command = [sys.executable, "-m", "fedocr", "fl", "simulate", "--preset", "three-orgs-mini", "--rounds", str(rounds),
               "--initial-model", "scratch", "--no-baselines", "--seed", str(seed), "--out", str(out),
               "--store", str(out / "runs.db")]
    measured: dict[str, float] = {}
    if not watched:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        from playwright.sync_api import sync_playwright

        out.mkdir(parents=True)
        with fedocr_server("fl", "dashboard", "--store", str(out / "runs.db")) as (base, server), sync_playwright() as p:
            federation = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
            try:
                page = browser.new_page()
                run_id = wait_for_first_run(base, federation)
                page.goto(f"{base}/dashboard#run={run_id}")
                start, before = time.perf_counter(), watcher_cpu(server.pid)
                if federation.wait() != 0:
                    raise SystemExit(f"bench: the watched federation of seed {seed} failed")
                after, wall = watcher_cpu(server.pid), time.perf_counter() - start
                page.wait_for_selector(f"#rounds tbody tr[data-round='{rounds}']", timeout=30_000)  # it followed
            finally:
                browser.close()
                if federation.poll() is None:
                    federation.kill()
        measured = {"watcher_cpu_s": sum(after.values()) - sum(before.get(pid, 0.0) for pid in after), "watched_wall_s": wall}
    report = json.loads((out / "report.json").read_text())
    return {"round_s": statistics.median(r["seconds"] for r in report["rounds"]), **measured}


def watcher_cpu(server_pid: int) -> dict[int, float]:
    """CPU seconds so far of the dashboard server and of the browser's processes (by PID)."""
    found = {}
    for proc in [psutil.Process(server_pid), *psutil.Process().children(recursive=True)]:
        try:
            if proc.pid == server_pid or any(k in proc.name() for k in ("chrom", "headless", "node")):
                times = proc.cpu_times()
                found[proc.pid] = times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            pass
    return found


def wait_for_first_run(base: str, federation: subprocess.Popen[bytes]) -> str:
    while federation.poll() is None:
        response = httpx.get(f"{base}/api/runs", timeout=10)
        runs = response.json().get("runs", []) if response.status_code == 200 else []
        if runs:
            return str(runs[0]["run_id"])
        time.sleep(0.5)
    raise SystemExit("bench: the federation ended before it appeared in its run store")


def round_time_ratios(work: Path, seeds: list[int], rounds: int) -> list[dict[str, float]]:
    """Per seed: the median round time alone and watched, run in turn (alternating which goes first)."""
    results = []
    for i, seed in enumerate(seeds):
        order = (False, True) if i % 2 == 0 else (True, False)
        runs = {watched: federation_seconds_per_round(work, seed, rounds, watched) for watched in order}
        alone, watched = runs[False], runs[True]
        results.append({"seed": seed, "alone_s": round(alone["round_s"], 2), "watched_s": round(watched["round_s"], 2),
                        "ratio": round(watched["round_s"] / alone["round_s"], 3),
                        "watcher_cpu_share": round(watched["watcher_cpu_s"] / watched["watched_wall_s"], 4)})
        print(f"  seed {seed}: {alone['round_s']:.1f} s per round alone, {watched['round_s']:.1f} s watched; dashboard "
              f"and browser used {watched['watcher_cpu_s']:.1f} CPU s in {watched['watched_wall_s']:.0f} s", flush=True)
    return results


def event_latencies_ms(base: str, store: Path, first: int, count: int, clients: int) -> list[float]:
    """Write `count` rounds, each once the stream is idle; time record_round's return -> the event."""
    arrived: dict[int, float] = {}
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{base}/api/runs/{RUN}/events", params={"after": first - 1, "max_seconds": 120},
                          timeout=130) as stream:
            ready.set()
            for line in stream.iter_lines():
                if line.startswith("data:") and '"round"' in line and '"run_id"' not in line:
                    arrived[json.loads(line[5:])["round"]] = time.perf_counter()
                    if len(arrived) == count:
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(30)
    rng, written = random.Random(1), {}
    with RunStore(store) as writer:
        for n in range(first, first + count):
            time.sleep(1.3)   # land anywhere in the server's 1 s polling period
            record = synthetic_round(n, clients, rng)
            writer.record_round(RUN, record)
            written[n] = time.perf_counter()
    thread.join(30)
    return [(arrived[n] - written[n]) * 1000 for n in written if n in arrived]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7, help="requests per API latency median")
    parser.add_argument("--loads", type=int, default=3, help="page loads in Chromium")
    parser.add_argument("--events", type=int, default=5, help="new rounds for the event latency")
    parser.add_argument("--fl-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="seeds of the federations run alone and watched (none: skip)")
    parser.add_argument("--fl-rounds", type=int, default=6, help="rounds of each of those federations")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedocr-dashboard-bench-"))
    store = work / "runs.db"
    build_s = build_store(store, args.rounds, args.clients)
    size_mb = sum(p.stat().st_size for p in work.glob("runs.db*")) / 1e6
    print(f"store: {args.rounds} rounds x {args.clients} clients, {size_mb:.0f} MB, written in {build_s:.0f} s")

    with fedocr_server("fl", "dashboard", "--store", str(store)) as (base, _):
        with httpx.Client(base_url=base, timeout=120) as client:
            # The first request right after start: the server totals the run's 1,000 rounds once
            # (in the background from start-up; later requests only add new rounds).
            cold = first_ms(client, f"/api/runs/{RUN}")
            detail_bytes = len(client.get(f"/api/runs/{RUN}").content)
            api = {"runs_list_ms": median_ms(client, "/api/runs", args.repeat),
                   "run_detail_ms": median_ms(client, f"/api/runs/{RUN}", args.repeat),
                   "latest_round_ms": median_ms(client, f"/api/runs/{RUN}/rounds/{args.rounds}", args.repeat)}
        page_ms = page_load_ms(base, args.rounds, args.loads)
        events = event_latencies_ms(base, store, args.rounds + 1, args.events, args.clients)

    rounds_ab = round_time_ratios(work, args.fl_seeds, args.fl_rounds) if args.fl_seeds and browser_available() else []
    ratio = spread([r["ratio"] for r in rounds_ab])
    watcher = spread([r["watcher_cpu_share"] for r in rounds_ab])

    run_page_ms = api["run_detail_ms"] + api["latest_round_ms"]
    event_ms = statistics.median(events) if events else None
    rows = [["first GET /api/runs/{id} after start (cold)", cold], ["GET /api/runs", api["runs_list_ms"]], ["GET /api/runs/{id} (run page data)", api["run_detail_ms"]],
            ["GET /api/runs/{id}/rounds/{latest}", api["latest_round_ms"]],
            ["run page API total", run_page_ms],
            ["page load in Chromium (to the client table)", page_ms if page_ms is not None else "-"],
            ["event latency (record_round -> client), median", event_ms if event_ms is not None else "-"],
            *([f"round time watched / alone, seed {r['seed']} ({r['alone_s']:.1f} s alone)", f"{r['ratio']:.3f}"]
              for r in rounds_ab),
            *([f"dashboard + browser CPU, share of one core, seed {r['seed']}", f"{r['watcher_cpu_share']:.3f}"]
              for r in rounds_ab)]
    print_table(["measure", "ms (or ratio)"], rows)
    result = {
        "store": {"rounds": args.rounds, "clients": args.clients, "megabytes": round(size_mb, 1),
                  "run_detail_bytes": detail_bytes},
        "api_ms": {k: round(v, 1) for k, v in api.items()}, "run_page_api_ms": round(run_page_ms, 1),
        "cold_run_detail_ms": round(cold, 1),
        "page_load_ms": round(page_ms, 1) if page_ms is not None else None,
        "event_latency_ms": {"median": round(event_ms, 1) if event_ms is not None else None,
                             "values": [round(v, 1) for v in events], "poll_interval_ms": 1000},
        "round_time_with_dashboard": {"federation": "three-orgs-mini from scratch", "rounds": args.fl_rounds,
                                      "per_seed": rounds_ab, "ratio": ratio,
                                      "watcher_cpu_share_of_one_core": watcher},
        "checks": {
            "run_page_under_1s": run_page_ms < 1000 and (page_ms is None or page_ms < 1000),
            "event_within_2s": event_ms is not None and event_ms < 2000 and len(events) == args.events,
            # None when not measured (--fl-seeds none, or no Chromium)
            "no_round_slowdown": None if ratio["median"] is None else ratio["median"] <= SLOWDOWN_TOLERANCE,
        },
    }
    print(f"wrote {write_result('dashboard', result)}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
