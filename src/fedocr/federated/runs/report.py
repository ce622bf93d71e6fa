"""report.json (docs/ARCHITECTURE.md, "Where results live"), built from the run store: the store is the
single source, the report a snapshot of it plus the final evaluation."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedocr.federated.runs.store import RunStore, round_to_dict
from fedocr.model.checkpoint import atomic_write


def build_report(store: RunStore, run_id: str) -> dict[str, Any]:
    run = store.run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id} in {store.path}")
    rounds = [round_to_dict(r) for r in store.rounds(run_id)]
    return {"run_id": run_id, "name": run["name"], "status": run["status"], "error": run.get("error"),
            "preset": run["federation"],
            "config": run["config"], "rounds": rounds, "final": run["final"] or {},
            "flower_run_ids": run["flower_run_ids"], **({"audit": run["audit"]} if run.get("audit") else {})}


def _clean(obj: Any) -> Any:
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(_clean(obj), ensure_ascii=False, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
