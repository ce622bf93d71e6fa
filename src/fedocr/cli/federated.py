"""`fedocr fl simulate | runs | show | certs | node-key`: thin conveniences over Flower (docs/ARCHITECTURE.md: not a second engine)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedocr.cli.common import EXIT_FAILURE, EXIT_USAGE, CliError, check_writable_file, print_json
from fedocr.cli.personal import add_personal_parser
from fedocr.cli.privacy import add_audit_parser, add_he_keys_parser, add_signing_key_parser, format_audit
from fedocr.cli.serving import add_dashboard_parser

DEFAULT_HOSTS = "127.0.0.1,localhost"   # the server certificate's names when none are given


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's sub-commands to the parser."""
    fl = sub.add_parser("fl", help="federated training on Flower: simulate, inspect runs, make certificates")
    fl_sub = fl.add_subparsers(dest="fl_command", required=True, metavar="FL_COMMAND")

    p = fl_sub.add_parser("simulate", help="run a synthetic federation on Flower's simulation engine",
                          description="Run the Flower App on Flower's simulation engine, one virtual SuperNode per "
                                      "organisation, then train the local-only and centralized baselines and write "
                                      "OUT/report.json, OUT/round-N.pt and OUT/model.pt. Re-running with the same "
                                      "--out resumes after the last completed round.")
    p.add_argument("--preset", required=True, help="federation: three-orgs, four-orgs, three-orgs-mini, ten-branches(-mini), many-clients(-mini), hidden-groups(-mini), one-kind-mini")
    p.add_argument("--rounds", type=int, required=True, help="federated rounds (num-rounds)")
    p.add_argument("--out", type=Path, required=True, help="output folder (models, state, report.json)")
    p.add_argument("--store", type=Path, help="run store (default: $FEDOCR_RUNS/runs.db)")
    p.add_argument("--local-epochs", type=float, help="epochs each client trains per round")
    p.add_argument("--lr", type=float, help="local learning rate (default: 3e-3 from scratch, 1e-4 from a trained model; SGD clients 0.1 and 0.01)")
    p.add_argument("--lr-decay", choices=["cosine", "none"], help="local rate over the rounds (default cosine, to 5%%)")
    p.add_argument("--batch-size", type=int, help="lines per local optimizer step")
    p.add_argument("--fraction", type=float, help="share of clients sampled per round")
    p.add_argument("--min-accepted", type=int, help="participation threshold")
    p.add_argument("--aggregate", choices=["all", "backbone", "fedbn"],
                   help="all: one global model; backbone: each node keeps its own head (FedPer); "
                        "fedbn: each node keeps its BatchNorm layers (FedBN)")
    p.add_argument("--initial-model", help="auto, scratch or an absolute .pt path")
    p.add_argument("--lines", type=int, help="training lines per node (a branch of size k has k times as many)")
    p.add_argument("--test-lines", type=int, help="test lines per organisation for the final table")
    p.add_argument("--val-lines", type=int, help="the server's synthetic validation lines")
    p.add_argument("--val-data", help="what the server validates on: public (default), members (the members' "
                                      "styles and devices) or an absolute path to a data set")
    p.add_argument("--deadline", type=float, help="round deadline in seconds")
    p.add_argument("--seed", type=int, help="run seed: data order, sampling, every step's randomness")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other run-config key")
    p.add_argument("--no-baselines", action="store_true", help="skip local-only and centralized baselines")
    p.add_argument("--dry-run", action="store_true", help="print the update pipeline this config builds and stop")
    p.set_defaults(run=run_simulate)

    p = fl_sub.add_parser("steps", help="print the client and server chains of the update pipeline a run config builds",
                          description="Print, in order, the client steps (after local training) and the server steps "
                                      "(per reply, then per round) that a run config builds, with each step's "
                                      "settings. Keys as in pyproject.toml's [tool.flwr.app.config], e.g. "
                                      "--set compress.top-k=0.1 --set server-momentum=0.9.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run-config key")
    p.set_defaults(run=run_steps)

    p = fl_sub.add_parser("runs", help="list the runs in the run store")
    p.add_argument("--store", type=Path, help="run store (default: $FEDOCR_RUNS/runs.db)")
    p.add_argument("--json", action="store_true", help="print the runs as one JSON array")
    p.set_defaults(run=run_runs)

    p = fl_sub.add_parser("readmit", help="take a quarantined node back into a run's sampling",
                          description="A node the robust rule flagged in quarantine.after of the last "
                                      "quarantine.window rounds is no longer sampled. This takes it back: the running "
                                      "server samples it again from its next round, with a clean flag history, and "
                                      "records that the operator re-admitted it.")
    p.add_argument("run_ref", metavar="RUN", help="run id, id prefix or name")
    p.add_argument("node", metavar="NODE", help="the node's name, as `fedocr fl show RUN` lists it")
    p.add_argument("--store", type=Path, help="run store (default: $FEDOCR_RUNS/runs.db)")
    p.set_defaults(run=run_readmit)

    p = fl_sub.add_parser("show", help="one run's rounds and clients")
    p.add_argument("run_ref", metavar="RUN", help="run id, id prefix or name")
    p.add_argument("--store", type=Path, help="run store (default: $FEDOCR_RUNS/runs.db)")
    p.add_argument("--json", action="store_true", help="print the report (report.json shape)")
    p.set_defaults(run=run_show)

    add_audit_parser(fl_sub)
    add_he_keys_parser(fl_sub)
    add_signing_key_parser(fl_sub)
    add_personal_parser(fl_sub)
    add_dashboard_parser(fl_sub)

    p = fl_sub.add_parser("report", help="write one run's dashboard as a standalone HTML file",
                          description="Write RUN's dashboard (charts, rounds, rejected clients, privacy, anomalies, "
                                      "each node's contribution, config and step chain) as one HTML file with "
                                      "everything inlined: it opens from disk, with no server and no network.")
    p.add_argument("run_ref", metavar="RUN", help="run id, id prefix or name")
    p.add_argument("--html", type=Path, required=True, metavar="OUT.html", help="file to write (atomically)")
    p.add_argument("--store", type=Path, help="run store (default: $FEDOCR_RUNS/runs.db)")
    p.set_defaults(run=run_report)

    p = fl_sub.add_parser("certs", help="make, --check or --renew-server the TLS certificates and SuperNode keys "
                                        "of a deployment")
    p.add_argument("--out", type=Path, required=True, help="folder for ca.crt, server.pem/.key and node keys")
    p.add_argument("--hosts", help="SuperLink names and IPs for the server certificate's SANs, comma-separated "
                                   f"(making: default {DEFAULT_HOSTS}; --check: names it must cover; "
                                   "--renew-server: default the current ones)")
    p.add_argument("--nodes", default="hospital,bank,school",
                   help="SuperNode key names, comma-separated ('' when each organisation makes its own: fl node-key)")
    p.add_argument("--days", type=int, default=365, help="validity of the server certificate in days (default 365)")
    p.add_argument("--ca-days", type=int, default=3650, help="validity of the CA in days (default 3650)")
    p.add_argument("--check", action="store_true",
                   help="only check an existing folder (warns 30 days before a certificate expires)")
    p.add_argument("--renew-server", action="store_true",
                   help="new server key and certificate under the same CA; node keys and registrations stay")
    p.add_argument("--ca-key", type=Path, help="the CA key, if kept offline (--renew-server; default OUT/ca.key)")
    p.add_argument("--force", action="store_true", help="replace the certificates in a non-empty --out folder")
    p.set_defaults(run=run_certs)

    p = fl_sub.add_parser("node-key", help="make this organisation's SuperNode key pair; send only NAME.pub "
                                           "to the operator")
    p.add_argument("--out", type=Path, required=True, help="folder for NAME (private, 0600) and NAME.pub")
    p.add_argument("--name", required=True, help="the name the operator registers the key under")
    p.set_defaults(run=run_node_key)


def _store_path(arg: Path | None) -> Path:
    from fedocr.federated.config import FlConfig

    return arg.resolve() if arg else FlConfig().store_path()


def run_simulate(args: argparse.Namespace) -> int:
    from fedocr.federated.config import VAL_SETS, ConfigError, FlConfig
    from fedocr.data.organisations import FEDERATIONS

    if args.preset not in FEDERATIONS:
        raise CliError(f"unknown preset {args.preset!r}; choose one of {', '.join(FEDERATIONS)}", 2)
    values: dict[str, Any] = {"federation": args.preset, "num-rounds": args.rounds, "out-dir": str(args.out.resolve()),
                              "store": str(_store_path(args.store))}
    for flag, key in [("local_epochs", "local-epochs"), ("lr", "lr"), ("lr_decay", "lr-decay"), ("batch_size", "batch-size"),
                      ("fraction", "fraction-train"), ("min_accepted", "min-accepted"), ("aggregate", "aggregate"),
                      ("initial_model", "initial-model"), ("lines", "lines-per-client"), ("test_lines", "test-lines"),
                      ("val_lines", "val-lines"), ("val_data", "val-data"), ("deadline", "round-deadline-s"),
                      ("seed", "seed")]:
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    values.update(_settings(args.set))
    try:
        cfg = FlConfig.from_run_config(values)
        start = cfg.initial_model_path()
        # The simulated server runs here: a missing validation set is a bad argument, not a failed run.
        if cfg.val_data not in VAL_SETS and not cfg.val_data_path().exists():
            raise ConfigError(f"run config val-data: {cfg.val_data_path()} does not exist")
    except ConfigError as exc:
        raise CliError(str(exc), 2) from exc
    if args.dry_run:
        from fedocr.federated.pipeline.build import describe

        print(describe(cfg.to_run_config()))
        return 0
    if start is None and not FEDERATIONS[args.preset].mini:
        print("fedocr: note: no base model (models/base.pt): starting from scratch with the full vocabulary, which "
              "does not learn in minutes on a CPU; try --preset three-orgs-mini", file=sys.stderr)
    from fedocr.federated.sim.simulate import SimulationFailed, simulate

    try:
        report = simulate(cfg, baselines=not args.no_baselines, printer=lambda s: print(s, flush=True))
    except SimulationFailed as exc:
        raise CliError(str(exc), EXIT_FAILURE) from exc
    if report.get("final"):
        print(format_final(report["final"]))
    if report.get("audit"):
        print(format_audit(report["audit"]))
    print(f"wrote {cfg.out_path() / 'report.json'} (run {report['run_id']})")
    if report["status"] != "finished":
        raise CliError(f"run {report['run_id']} {report['status']}: {report.get('error') or 'see the log above'}",
                       EXIT_FAILURE)
    return 0


def _settings(items: list[str]) -> dict[str, str]:
    """--set KEY=VALUE pairs (values are typed by the config that reads them)."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--set {item!r}: expected KEY=VALUE", 2)
        values[key.strip()] = value.strip()
    return values


def run_steps(args: argparse.Namespace) -> int:
    from fedocr.federated.config import ConfigError, FlConfig
    from fedocr.federated.pipeline.build import describe

    try:
        cfg = FlConfig.from_run_config(_settings(args.set))
    except ConfigError as exc:
        raise CliError(str(exc), 2) from exc
    print(describe(cfg.to_run_config()))
    return 0


def format_final(final: dict[str, Any]) -> str:
    """The report's per-organisation CER table (a kind a run did not measure shows as -)."""
    measured = {k for c in final.get("clients", {}).values() for k in (c.get("own_test_cer") or {})}
    kinds = ("local_only", "federated", "centralized") + tuple(k for k in ("personalized", "cluster") if k in measured)

    def cell(scores: dict[str, float] | None, kind: str, width: int) -> str:
        value = (scores or {}).get(kind)
        return f"{value:>{width}.4f}" if value is not None else f"{'-':>{width}}"

    lines = [f"{'organisation':<14}" + "".join(f"{'own ' + k:>18}" for k in kinds)
             + "".join(f"{'others ' + k:>21}" for k in kinds)]
    for org, c in final.get("clients", {}).items():
        lines.append(f"{org:<14}" + "".join(cell(c.get("own_test_cer"), k, 18) for k in kinds)
                     + "".join(cell(c.get("other_test_cer"), k, 21) for k in kinds))
    if final.get("clusters"):
        membership = final["clusters"]["membership"]
        lines.append(f"clusters ({final['clusters']['k']}): " + "; ".join(
            f"{c}: {', '.join(sorted(n for n, m in membership.items() if m == c))}" for c in sorted(set(membership.values()))))
    if final.get("source"):
        lines.append(f"({final['source']})")
    if final.get("stopped"):
        lines.append(f"run {final['stopped']}")
    return "\n".join(lines)


def _open_store(arg: Path | None) -> Any:
    from fedocr.federated.runs.store import RunStore

    path = _store_path(arg)
    if not path.is_file():
        raise CliError(f"{path}: no run store (run `fedocr fl simulate` or pass --store)")
    return RunStore(path)


def run_runs(args: argparse.Namespace) -> int:
    with _open_store(args.store) as store:
        runs = store.runs()
    if args.json:
        print_json(runs)
        return 0
    print(f"{'run':<13} {'name':<20} {'federation':<16} {'status':<9} {'rounds':>6} {'best val CER':>12}  created")
    for r in runs:
        best = f"{r['best_val_cer']:.4f}" if r["best_val_cer"] is not None else "-"
        print(f"{r['run_id']:<13} {r['name'][:20]:<20} {(r['federation'] or '-'):<16} {r['status']:<9} "
              f"{r['rounds']:>6} {best:>12}  {r['created']}")
    return 0


def _contribution_line(c: dict[str, Any]) -> str:
    """A node's leave-one-out and Shapley values (with the interval) as `fl show` prints them."""
    def num(v: float | None) -> str:
        return f"{v:+.4f}" if v is not None else "-"
    ci = c.get("shapley_ci")
    interval = f" [{num(ci[0])}, {num(ci[1])}]" if ci and ci[0] != ci[1] else ""   # an exact value has none
    return f"loo {num(c.get('loo'))}  shapley {num(c.get('shapley'))}{interval}"


def quarantined(report: dict[str, Any]) -> dict[str, str]:
    """The nodes a run holds in quarantine now, and why (its last quarantine record for each)."""
    held: dict[str, str] = {}
    for r in report["rounds"]:
        for q in (s for s in r.get("steps", []) if s["step"] == "quarantine" and "excluded" not in s):
            if "quarantined" in q:
                held[q["client"]] = q["quarantined"]
            else:
                held.pop(q["client"], None)
    return held


def run_readmit(args: argparse.Namespace) -> int:
    from fedocr.federated.runs.report import build_report

    with _open_store(args.store) as store:
        run_id = store.find(args.run_ref)
        if run_id is None:
            raise CliError(f"no run {args.run_ref!r} in {store.path}")
        held = quarantined(build_report(store, run_id))
        if args.node not in held:
            raise CliError(f"{args.node} is not quarantined in run {run_id}"
                           + (f" (quarantined: {', '.join(sorted(held))})" if held else " (no node is)"), EXIT_USAGE)
        if args.node in store.pending_readmissions(run_id):
            print(f"{args.node}: already re-admitted; the server takes it back at its next round")
            return 0
        store.request_readmission(run_id, args.node)
    print(f"{args.node} re-admitted to run {run_id}: sampled again from the server's next round "
          f"(it was {held[args.node]})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from fedocr.federated.runs.report import build_report

    with _open_store(args.store) as store:
        run_id = store.find(args.run_ref)
        if run_id is None:
            raise CliError(f"no run {args.run_ref!r} in {store.path}")
        report = build_report(store, run_id)
    if args.json:
        print_json(report)
        return 0
    print(f"run {run_id} ({report['name']}), {report['preset']}, {report['status']}")
    for r in report["rounds"]:
        cer = f"{r['val_cer']:.4f}" if r["val_cer"] is not None else "-"
        # `accepted` counts what passed the checks; a robust rule may then leave some out (their records say why)
        left = sum(1 for c in r["clients"] if (c["reason"] or "").startswith("left out"))
        print(f"round {r['round']}: accepted {r['accepted']}/{r['sampled']}"
              + (f" ({left} left out by the aggregator)" if left else "")
              + f"  val CER {cer}  {r['seconds']:.1f} s" + ("" if r["applied"] else f"  [{r['note']}]"))
        for c in r["clients"]:
            status = "accepted" if c["accepted"] else f"rejected: {c['reason']}"
            norm = f"{c['update_norm']:.3g}" if c["update_norm"] is not None else "-"
            print(f"    {c['id']:<12} examples {c['examples']:>5}  norm {norm:>8}  up {c['bytes_up']:>9} B  {status}")
        summed = [s for s in r.get("steps", []) if s["step"] == "check" and s["client"] == "secure-sum"]
        if summed:   # secure aggregation or HE: no node's update reached the server, only their mean
            how = "HE (CKKS)" if any(s["step"] == "ckks" for s in r.get("steps", [])) else "SecAgg+"
            print(f"    {'secure sum':<12} {how}: the server saw only the mean of the accepted updates, "
                  f"norm {summed[0].get('norm', float('nan')):.3g}")
        for e in (s for s in r.get("steps", []) if s["step"] == "evaluate" and "cer" in s):
            local = f"  local-only CER {e['local_only_cer']:.4f}" if "local_only_cer" in e else ""
            shared = f"  global model {e['global_cer']:.4f}" if "global_cer" in e else ""   # beside a personal model
            print(f"    {e['client']:<12} held-out CER {e['cer']:.4f}  line accuracy {e['line_accuracy']:.3f}  "
                  f"({e.get('lines', 0):.0f} lines){shared}{local}")
        for cl in (s for s in r.get("steps", []) if s["step"] == "cluster" and s["client"] == "*"):
            found = (" (k found: silhouette " + ", ".join(f"{k}: {v:.2f}" for k, v in cl["silhouette"].items()) + ")"
                     if "silhouette" in cl else "")
            if cl.get("split"):
                print(f"    {'cluster split':<12} by update similarity{found}: " + "; ".join(
                    f"{c}: {', '.join(members)}" for c, members in cl["groups"].items()))
            elif "postponed" in cl or "declined" in cl:
                print(f"    {'cluster split':<12} {cl.get('declined', cl.get('postponed', '')).removeprefix('split ')}")
            else:
                cer = f"{cl['val_cer']:.4f}" if cl.get("val_cer") is not None else "-"
                print(f"    {'cluster ' + str(cl['cluster']):<12} {', '.join(cl['members'])}  val CER {cer}"
                      + ("" if cl["committed"] else "  (rolled back)"))
        for sc in (s for s in r.get("steps", []) if s["step"] == "score" and s.get("flagged")):
            print(f"    {sc['client']:<12} flagged: {sc['verdict']}  norm {sc['norm']:.3g}  clip x{sc['clip']:.2f}  "
                  f"cosine {sc['cosine']:+.2f}  contribution {sc['contribution']:+.3f}")
        for q in (s for s in r.get("steps", []) if s["step"] == "quarantine"):
            if "excluded" in q:
                print(f"    {'quarantine':<12} not sampled: {', '.join(q['excluded'])}")
            else:
                print(f"    {q['client']:<12} {q.get('quarantined') or q.get('readmitted')}")
        for dp in (s for s in r.get("steps", []) if "epsilon" in s):
            who = "all nodes" if dp["client"] == "*" else dp["client"]
            budget = f" of {dp['target_epsilon']:g}" if "target_epsilon" in dp else ""
            print(f"    {who:<12} privacy spent: epsilon {dp['epsilon']:.3f}{budget} at delta {dp['delta']:g} "
                  f"({dp['step']}, noise multiplier {dp['noise_multiplier']:.3g})")
        for ct in (s for s in r.get("steps", []) if s["step"] == "contribution" and s["client"] == "*"):
            print(f"    contribution ({ct.get('utility', '-')}, {ct['method']}"
                  + (f": disabled, {ct['disabled']})" if ct.get("disabled") else
                     f", coalitions {ct.get('subsets', 'alone')}, Shapley {ct.get('estimator') or '-'}, "
                     f"{ct['evaluations']} evaluations, {ct['seconds']:.1f} s)"))
        for ct in (s for s in r.get("steps", []) if s["step"] == "contribution" and s["client"] != "*"):
            print(f"    {ct['client']:<12} {_contribution_line(ct)}")
    if report["final"]:
        print(format_final(report["final"]))
    contribution = (report["final"] or {}).get("contribution")
    if contribution:
        print(f"contribution over the run ({contribution['utility']} improvement, summed over applied rounds, "
              f"{contribution['confidence']:.0%} interval):")
        for client in contribution["ranking"]:
            print(f"    {client:<12} {_contribution_line(contribution['clients'][client])}")
    if report.get("audit"):
        print(format_audit(report["audit"]))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from fedocr.federated.runs.reader import StoreUnavailable
    from fedocr.serve.dashboard_report import ReportError, write_report

    out = check_writable_file(args.html)
    try:
        write_report(_store_path(args.store), args.run_ref, out)
    except (ReportError, StoreUnavailable) as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_certs(args: argparse.Namespace) -> int:
    from fedocr.federated.deploy.certs import CertError, check_bundle, make_bundle, renew_server

    for flag, days in (("--days", args.days), ("--ca-days", args.ca_days)):
        if days < 1:
            raise CliError(f"{flag} must be at least 1, got {days}", EXIT_USAGE)
    if args.check + args.renew_server + args.force > 1:
        raise CliError("choose one of --check, --renew-server and --force", EXIT_USAGE)
    hosts = [h.strip() for h in (args.hosts or "").split(",") if h.strip()]
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    try:
        if args.renew_server:
            renew_server(args.out, args.ca_key, hosts, days=args.days)
        elif not args.check:
            make_bundle(args.out, hosts or DEFAULT_HOSTS.split(","), nodes, days=args.days, force=args.force,
                        ca_days=args.ca_days)
        found = check_bundle(args.out, hosts)
    except CertError as exc:
        raise CliError(str(exc)) from exc
    for line in found:
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
    return 0


def run_node_key(args: argparse.Namespace) -> int:
    from fedocr.federated.deploy.certs import CertError, write_node_key

    try:
        public = write_node_key(args.out, args.name)
    except CertError as exc:
        raise CliError(str(exc)) from exc
    print(f"wrote {args.out / args.name} (private: keep it on this machine) and {public} (send it to the operator)")
    return 0
