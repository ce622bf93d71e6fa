"""`fedocr fl export-personal`: a node's personalised model, ready for `fedocr serve`."""
from __future__ import annotations

import argparse
from pathlib import Path

from fedocr.cli.common import EXIT_FAILURE, CliError


def add_personal_parser(fl_sub: argparse._SubParsersAction) -> None:
    p = fl_sub.add_parser("export-personal", help="export a node's personalised model (FedPer, FedBN or Ditto)",
                          description="On the node: apply NODE's own state (its CTC head, its BatchNorm layers or "
                                      "its Ditto model, as kept in its state-dir) to RUN_DIR's global model and write "
                                      "OUT.pt and a verified OUT.onnx that `fedocr serve --model` loads. RUN_DIR is the "
                                      "operator's published run folder (report.json, round-N.pt), copied to the node. "
                                      "The provenance names the run, the round and the node.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's out-dir (report.json, model.pt, round-N.pt)")
    p.add_argument("--node", required=True, help="the node's client name (as in `fedocr fl show`)")
    p.add_argument("--out", type=Path, required=True, help="OUT.pt (and OUT.onnx) to write")
    p.add_argument("--state-dir", type=Path, help="the node's state-dir (default: RUN_DIR/node-state, as in simulation)")
    p.add_argument("--round", type=int, help="the global model of this round (default: the last; the node keeps only its latest state)")
    p.add_argument("--no-onnx", action="store_true", help="write the .pt checkpoint only")
    p.set_defaults(run=run_export_personal)


def run_export_personal(args: argparse.Namespace) -> int:
    from fedocr.export import ExportError
    from fedocr.federated.personal_export import PersonalExportError, export_personal
    from fedocr.model import CheckpointError

    try:
        prov = export_personal(args.run_dir.resolve(), args.node, args.out, args.state_dir, args.round,
                               onnx=not args.no_onnx)
    except (PersonalExportError, CheckpointError, ExportError) as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
    written = [args.out.with_suffix(".pt")] + ([] if args.no_onnx else [args.out.with_suffix(".onnx")])
    print(f"wrote {', '.join(map(str, written))}: {prov['method']} model of node {prov['node']}, "
          f"run {prov['run_id']} round {prov['round']}")
    return 0
