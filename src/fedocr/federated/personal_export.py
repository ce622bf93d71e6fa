"""`fedocr fl export-personal`: a node's personalised model as a checkpoint and a verified ONNX
graph that `fedocr serve` can load, built on the node itself from the run's global model and the
state the node keeps on its own disk (its CTC head, its BatchNorm layers or its Ditto model).
Nothing of it ever went to the server; the provenance names the run, the round and the node.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from fedocr.federated.node_state import default_state_path, load_node_state
from fedocr.federated.pipeline.build import build_client_chain
from fedocr.federated.weights import load_weights, model_weights
from fedocr.model import load_checkpoint, save_checkpoint
from fedocr.model.checkpoint import provenance


class PersonalExportError(ValueError):
    """The run, round or node state needed for a personal model is missing or does not match."""


def _chain_settings(run_dir: Path) -> dict[str, Any]:
    """The run config keys the client chain reads, from the run's report.json."""
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise PersonalExportError(f"{report_path} not found: give the out-dir of a federated run")
    config = json.loads(report_path.read_text(encoding="utf-8")).get("config") or {}
    return {**(config.get("steps") or {}), "aggregate": config.get("aggregate", "all")}


def last_round(run_dir: Path) -> int:
    rounds = [int(p.stem.split("-")[1]) for p in run_dir.glob("round-*.pt") if p.stem.split("-")[1].isdigit()]
    if not rounds:
        raise PersonalExportError(f"no round-N.pt in {run_dir}: give the out-dir of a federated run")
    return max(rounds)


def export_personal(run_dir: Path, node: str, out: Path, state_dir: Path | None = None,
                    round_: int | None = None, onnx: bool = True) -> dict[str, Any]:
    """Write OUT (.pt) and, with `onnx`, OUT with .onnx: the global model of `round_` (default: the
    run's last round, the one the node's state goes with: a node keeps only its latest state) with
    `node`'s personal state applied. Returns the provenance."""
    source = run_dir / f"round-{round_ if round_ is not None else last_round(run_dir)}.pt"
    if not source.is_file():
        raise PersonalExportError(f"{source} not found")
    chain = build_client_chain(_chain_settings(run_dir))
    personal = [s.name for s in chain.steps if s is chain.personal() or hasattr(s, "start_weights")]
    if not personal:
        raise PersonalExportError("the run did not personalise: its nodes share one global model (model.pt)")
    ckpt = load_checkpoint(source)
    run_id = str(ckpt.provenance.get("run_id", ""))
    state_path = state_dir / f"{node}.npz" if state_dir else default_state_path(run_dir, node)
    states = load_node_state(state_path, run_id)
    if not states:
        raise PersonalExportError(f"no state of run {run_id} for node {node!r} at {state_path} (is this the "
                                  f"node's state-dir?)")
    load_weights(ckpt.model, chain.personal_weights(model_weights(ckpt.model), states))
    prov = provenance(kind="personal", run_id=run_id, round=ckpt.provenance.get("round"), node=node,
                      method=personal[0], global_model=str(source))
    out = out.with_suffix(".pt")
    save_checkpoint(out, ckpt.model, ckpt.charset, prov)
    if onnx:
        from fedocr.export import export_onnx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(out, out.with_suffix(".onnx"))
    return prov
