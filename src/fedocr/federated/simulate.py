"""`fedocr fl simulate`: the ServerApp and ClientApp on Flower's simulation engine (Ray), one
virtual SuperNode per synthetic organisation, then the local-only and centralized baselines
and report.json.

It drives Flower's own engine (`flwr.simulation.run_simulation`); nothing here carries messages.
Every Flower run needs the environment in `flower_env`; Ray gets a short temporary folder of its
own (its socket paths must stay under 107 characters) that is removed afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedocr.federated.config import FlConfig
from fedocr.federated.orgs import get_federation
from fedocr.federated.report import build_report, write_json
from fedocr.federated.store import RunStore

# At most two concurrent Ray actors on this machine kind (each ~550 MB, one core each).
MAX_ACTORS = 2


class SimulationFailed(RuntimeError):
    """The federated run ended with an error (the run store and report.json say which)."""


def flower_env(flwr_home: Path, ray_tmp: Path | None = None) -> dict[str, str]:
    """The environment every Flower run needs here (notes/flower-1.42.md)."""
    env = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(flwr_home)}
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def simulate(cfg: FlConfig, baselines: bool = True, printer: Callable[[str], None] = print,
             actors: int = MAX_ACTORS) -> dict[str, Any]:
    """Run the federation of `cfg.federation` for `cfg.num_rounds` rounds (resuming a run found in
    the out-dir), then evaluate; returns the report that was written to out-dir/report.json.

    A run that stalls (too few nodes) returns its report with status "stalled"; one that fails
    raises SimulationFailed. The process environment is left as it was found."""
    fed = get_federation(cfg.federation)
    out = cfg.out_path()
    out.mkdir(parents=True, exist_ok=True)
    import torch
    from flwr.simulation import run_simulation

    from fedocr.federated.client_app import build_client_app
    from fedocr.federated.server_app import build_server_app

    ray_tmp = Path(tempfile.mkdtemp(prefix="fedocr-ray-", dir="/tmp"))
    env = flower_env(out / ".flwr", ray_tmp)
    saved = dict(os.environ)  # Flower and Ray set variables of their own too
    (out / ".flwr").mkdir(exist_ok=True)
    overrides = cfg.to_run_config()

    cpus = max(1, min(actors, os.cpu_count() or 1))
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                             "logging_level": "warning", "log_to_driver": True}}
    threads = torch.get_num_threads()
    failure: Exception | None = None
    try:
        os.environ.update(env)
        # The ServerApp validates in this process while Ray actors train on the same cores.
        torch.set_num_threads(1)
        run_simulation(server_app=build_server_app(overrides), client_app=build_client_app(overrides),
                       num_supernodes=len(fed.orgs), backend_config=backend)
    except Exception as exc:  # the ServerApp failed; it recorded why in the store and report
        failure = exc
    finally:
        _stop_ray()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        torch.set_num_threads(threads)
        if dict(os.environ) != saved:  # FLWR_HOME and RAY_TMPDIR (a deleted folder) must not outlive the run
            os.environ.clear()
            os.environ.update(saved)
    if failure is not None:
        reason = str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
        raise SimulationFailed(f"the federated run failed: {reason}") from failure
    report_path = out / "report.json"
    if not report_path.is_file():
        raise SimulationFailed(f"the federated run wrote no {report_path}")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    # The comparison uses the last round's global model: the same training compute as the baselines.
    # (model.pt, the best round on the `public` set, is what gets served; public has no
    # organisation devices, so it may prefer an early round.)
    last = out / f"round-{report['rounds'][-1]['round']}.pt" if report.get("rounds") else out / "model.pt"
    if baselines and report["status"] == "finished" and last.is_file():
        from fedocr.federated.baselines import final_evaluation

        final = final_evaluation(cfg, last, printer)
        with RunStore(cfg.store_path()) as store:
            store.finish_run(report["run_id"], report["status"], final=final, error=report.get("error"))
            report = build_report(store, report["run_id"])
        write_json(report_path, report)
    return report


def _stop_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
