"""`fedocr fl audit RUN_DIR`: the privacy audit of a simulated run, and how an audit block reads."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedocr.cli.common import EXIT_FAILURE, EXIT_OUTPUT, CliError, print_json


def add_audit_parser(fl_sub: argparse._SubParsersAction) -> None:
    p = fl_sub.add_parser("audit", help="membership inference and canary exposure of a simulated run's model",
                          description="Audit RUN_DIR/model.pt: the loss-threshold membership-inference AUC on each "
                                      "node's training vs held-out lines, and the exposure (Carlini et al. 2019) of "
                                      "the canaries the run planted (run config canary.org) and of never-planted "
                                      "controls. Writes the `audit` block into RUN_DIR/report.json and the run store.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's out-dir (report.json, model.pt)")
    p.add_argument("--candidates", type=int, help="|R|: random secrets each canary is ranked among (default: the "
                                                  "run's audit.candidates)")
    p.add_argument("--json", action="store_true", help="print the audit block as JSON")
    p.set_defaults(run=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    from fedocr.federated.config import ConfigError
    from fedocr.federated.sim.audit import AuditError, audit_run
    from fedocr.model import CheckpointError

    if args.candidates is not None and args.candidates < 1:
        raise CliError("--candidates must be at least 1", 2)
    try:
        block = audit_run(args.run_dir.resolve(), args.candidates, printer=(lambda _: None) if args.json else print)
    except (AuditError, ConfigError, CheckpointError) as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
    if args.json:
        print_json(block)
    else:
        print(format_audit(block))
    return 0


def format_audit(audit: dict[str, Any]) -> str:
    """The audit block as a few lines: MIA AUC per node, exposure of planted secrets vs controls."""
    mia = audit["membership"]
    lines = [f"privacy audit of {audit.get('model', 'the model')} ({audit.get('seconds', 0):.0f} s)",
             f"  membership inference AUC (chance 0.5): mean {mia['mean_auc']:.3f}  "
             + "  ".join(f"{node} {n['auc']:.3f}" for node, n in mia["nodes"].items())]
    if "calibrated_mean_auc" in mia:
        lines.append(f"  calibrated by {audit['reference']} (chance 0.5): mean {mia['calibrated_mean_auc']:.3f}  "
                     + "  ".join(f"{node} {n['calibrated_auc']:.3f}" for node, n in mia["nodes"].items()))
    elif audit.get("no_reference"):
        lines.append(f"  no calibrated attacks: {audit['no_reference']}")
    canaries = audit.get("canaries")
    if canaries:
        lines.append(f"  canaries: {canaries['node']}, {canaries['format']}, {canaries['repeats']} repeats each")
        if read := canaries.get("planted_lines"):
            start = f"{read['start_cer']:.4f} under the start, " if "start_cer" in read else ""
            lines.append(f"  planted lines ({read['lines']}) read at CER {start}"
                         f"{read['final_cer']:.4f} under the model")
        what_of = {"full": "fresh renderings", "calibrated": f"fresh renderings, calibrated by {audit.get('reference')}"}
        for name in ("full", "calibrated", "occluded"):
            v = canaries.get(name)
            if v:
                what = f"last {v['hidden_digits']} digits hidden" if name == "occluded" else what_of[name]
                lines.append(f"  exposure, {what} (bits; |R| {v['candidates']}, chance {v['chance_bits']:.2f}, "
                             f"max {v['max_bits']:.2f}): planted mean {v['planted_mean']:.2f} "
                             f"{v['planted']}  controls mean {v['controls_mean']:.2f} {v['controls']}")
    return "\n".join(lines)


def add_he_keys_parser(fl_sub: argparse._SubParsersAction) -> None:
    p = fl_sub.add_parser("he-keys", help="make the CKKS key for homomorphically encrypted updates",
                          description="Write OUT/secret.tenseal (mode 0600: give a copy to every node, as you give "
                                      "their TLS keys, and name it with --node-config 'he-keys=\"/abs/folder\"') and "
                                      "OUT/public.tenseal (the server's: it adds ciphertexts and cannot decrypt; run "
                                      "config he.keys). Every node shares the one secret key: a node colluding with "
                                      "the server could decrypt the others' updates (README, trust model).")
    p.add_argument("--out", type=Path, required=True, help="folder to write the two files into")
    p.add_argument("--poly-degree", type=int, default=8192, choices=(4096, 8192, 16384),
                   help="CKKS ring dimension, as the run's he.poly-degree (default 8192: 4096 values per ciphertext)")
    p.add_argument("--force", action="store_true", help="replace a key already there (nodes holding the old one "
                                                        "can no longer take part)")
    p.set_defaults(run=run_he_keys)


def run_he_keys(args: argparse.Namespace) -> int:
    from fedocr.federated.pipeline.he import PUBLIC, make_keys

    if (args.out / PUBLIC).exists() and not args.force:
        raise CliError(f"{args.out / PUBLIC} exists: the nodes may hold its secret key; pass --force to replace it",
                       EXIT_OUTPUT)
    try:
        secret, public = make_keys(args.out, args.poly_degree)
    except OSError as exc:
        raise CliError(f"{args.out}: {exc.strerror or exc}", EXIT_OUTPUT) from exc
    print(f"wrote {secret} (the nodes') and {public} (the server's)")
    return 0


def add_signing_key_parser(fl_sub: argparse._SubParsersAction) -> None:
    p = fl_sub.add_parser("signing-key", help="make the Ed25519 key the federation signs its published models with",
                          description="Write OUT/signing.key (mode 0600: the federation server's; name it with the run "
                                      "config sign-key) and OUT/signing.pub (give it to every OCR server: "
                                      "`fedocr serve --trust OUT/signing.pub` serves only files it signed).")
    p.add_argument("--out", type=Path, required=True, help="folder to write the two files into")
    p.add_argument("--force", action="store_true", help="replace a key pair already there (servers trusting the old "
                                                        "public key will refuse the new models)")
    p.set_defaults(run=run_signing_key)


def run_signing_key(args: argparse.Namespace) -> int:
    from fedocr.model.signature import make_signing_key

    try:
        private, public = make_signing_key(args.out, args.force)
    except FileExistsError as exc:
        raise CliError(str(exc), EXIT_OUTPUT) from exc
    except OSError as exc:
        raise CliError(f"{args.out}: {exc.strerror or exc}", EXIT_OUTPUT) from exc
    print(f"wrote {private} (the federation server's, keep it private) and {public} (for every OCR server)")
    return 0
