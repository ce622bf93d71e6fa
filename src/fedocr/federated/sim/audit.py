"""The privacy audit of a simulated run (`fedocr fl audit RUN_DIR`, and the end of `fedocr fl
simulate` when `audit.enabled` or `canary.org` is set): what an attacker holding the published
model (OUT/model.pt) learns about the organisations' training lines.

- membership inference: per node, the loss-threshold attack's AUC on its training lines vs its
  held-out test lines (both redrawn from the run config, as the simulation drew them);
- canary exposure: each planted secret and each never-planted control ranked among
  `audit.candidates` random secrets of the same format, on fresh renderings (`full`) and with its
  last `audit.hidden-digits` digits painted over (`occluded`). Methods and their OCR adaptation:
  `fedocr.train.audit`;
- how the planted lines themselves read (CER) under the audited model and the starting one.

Membership inference and the full exposure run twice when the run started from a checkpoint (the
shipped base model, or any `initial-model`): on the raw loss, and calibrated by that starting
model's loss (the attacker downloads it as anyone can). The occluded variant stays raw. A run
from scratch has no public reference; its audit says so.

The result is the `audit` block of report.json (written atomically) and of the run store. It
needs the organisations' synthetic lines, so it audits simulations, not deployments.
"""
from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from fedocr.charset import Charset
from fedocr.data import SubsetLines
from fedocr.data.canaries import SecretFormat, draw_secrets
from fedocr.data.organisations import get_federation, org_lines
from fedocr.federated.config import FlConfig
from fedocr.federated.pipeline.checks import tensor_digest
from fedocr.federated.runs.report import write_json
from fedocr.federated.runs.store import RunStore
from fedocr.federated.sim.canaries import AuditConfig, Secrets, planted_lines, run_secrets, write_secrets
from fedocr.federated.weights import model_weights
from fedocr.model import CRNN, CheckpointError, load_checkpoint, torch_logits_fn
from fedocr.train.audit import (canary_exposure, chance_exposure, max_exposure, membership_auc,
                                occluded_exposure)
from fedocr.train.evaluate import evaluate

AUDIT_RENDER_OFFSET = 1_000_003   # audit renderings: a seed none of the planted lines was drawn with


class AuditError(RuntimeError):
    """A run folder the audit cannot read (no report.json or model.pt, not a simulation)."""


def config_of(report: dict[str, Any]) -> FlConfig:
    """The run's FlConfig from report.json's `config` (FlConfig.to_dict plus resolved extras)."""
    saved = report.get("config") or {}
    known = {f.name for f in fields(FlConfig)} - {"steps", "audit"}
    flat = {k.replace("_", "-"): v for k, v in saved.items() if k in known}
    audit = {key: saved["audit"][name] for key, name in AuditConfig.KEYS.items() if name in saved.get("audit", {})}
    return FlConfig.from_run_config({**flat, **saved.get("steps", {}), **audit})


def reference_model(report: dict[str, Any], charset: Charset) -> tuple[CRNN | None, dict[str, str]]:
    """The public model the run started from, which the calibrated attacks subtract, and the
    audit's note of it (`reference`, `reference_digest`); or None and why there is none
    (`no_reference`). The starting point is the one the run recorded, not what its config would
    resolve to today, and a file whose weights changed since is not used."""
    saved = report.get("config") or {}
    started = str(saved.get("initial_model_resolved") or "")
    if not started or started.startswith("scratch"):
        return None, {"no_reference": "the run started from scratch: there is no public starting model to calibrate "
                                      "against" if started else "the report does not say what the run started from"}
    path = Path(started)
    if not path.is_file():
        return None, {"no_reference": f"the run's starting model {path} is not there any more"}
    try:
        model = load_checkpoint(path, expect_charset=charset).model.eval()
    except CheckpointError as exc:
        return None, {"no_reference": str(exc)}
    digest = tensor_digest(model_weights(model))
    if saved.get("initial_model_digest") not in (None, digest):
        return None, {"no_reference": f"{path} holds other weights than the run started from"}
    return model, {"reference": str(path), "reference_digest": digest}


def membership(model: CRNN, charset: Charset, cfg: FlConfig, reference: CRNN | None = None) -> dict[str, Any]:
    """Loss-threshold membership inference per node: its training lines vs its held-out lines,
    raw and (with a reference) difficulty-calibrated."""
    nodes: dict[str, dict[str, Any]] = {}
    for node in get_federation(cfg.federation).names:
        members = org_lines(cfg.federation, node, "train", cfg.lines_per_client, cfg.seed, charset.version, charset)
        held = org_lines(cfg.federation, node, "test", cfg.test_lines, cfg.seed, charset.version, charset)
        m, h = min(cfg.audit.lines, len(members)), min(cfg.audit.lines, len(held))
        sides = (SubsetLines(members, range(m), f"{node}:train"), SubsetLines(held, range(h), f"{node}:test"))
        aucs = membership_auc(model, charset, *sides, reference=reference)
        nodes[node] = {"auc": aucs["raw"], **({"calibrated_auc": aucs["calibrated"]} if "calibrated" in aucs else {}),
                       "members": m, "non_members": h}
    block = {"attack": "loss threshold (Yeom et al. 2018): AUC of -CTC loss, training vs held-out lines",
             "chance": 0.5, "mean_auc": statistics.fmean(n["auc"] for n in nodes.values()), "nodes": nodes}
    if reference is not None:
        block["calibrated_attack"] = "the same on the loss less the starting model's loss (Watson et al. 2022)"
        block["calibrated_mean_auc"] = statistics.fmean(n["calibrated_auc"] for n in nodes.values())
    return block


def _variant(values: dict[str, list[float]], candidates: int, **extra: Any) -> dict[str, Any]:
    """One variant's exposures (bits) per group, their means, and the scale to read them on."""
    return {"candidates": candidates, **extra, "max_bits": max_exposure(candidates),
            "chance_bits": chance_exposure(candidates),
            **{group: [round(v, 3) for v in vals] for group, vals in values.items()},
            **{f"{group}_mean": statistics.fmean(vals) for group, vals in values.items()}}


def planted_reading(model: CRNN, charset: Charset, cfg: FlConfig, secrets: Secrets,
                    reference: CRNN | None = None) -> dict[str, Any]:
    """How well the planted lines themselves (the renderings the node trained on) are read: CER
    under the audited model and, with a reference, under the starting model. A start that already
    reads them leaves training little loss to take off them, hence little to memorise."""
    lines = planted_lines(cfg.federation, secrets, charset)

    def cer(m: CRNN) -> float:
        return evaluate(torch_logits_fn(m), charset, lines).cer
    return {"lines": len(lines), **({"start_cer": cer(reference)} if reference is not None else {}),
            "final_cer": cer(model)}


def exposures(model: CRNN, charset: Charset, cfg: FlConfig, secrets: Secrets,
              reference: CRNN | None = None) -> dict[str, Any]:
    """Exposure of each planted secret and each control, full, calibrated against `reference`
    (when given) and occluded (in the order of OUT/canaries.json; the report shows no secret)."""
    fed = get_federation(cfg.federation)
    preset = fed.preset(fed.node(secrets.org).org)
    seed = secrets.render_seed + AUDIT_RENDER_OFFSET
    every = [*secrets.planted, *secrets.controls]
    n, hidden = cfg.audit.candidates, cfg.audit.hidden_digits
    n_tails = min(n, 10 ** hidden - 1)
    full: dict[str, list[float]] = {"planted": [], "controls": []}
    calibrated: dict[str, list[float]] = {"planted": [], "controls": []}
    occluded: dict[str, list[float]] = {"planted": [], "controls": []}
    for group, texts in (("planted", secrets.planted), ("controls", secrets.controls)):
        for secret in texts:
            rng = random.Random(f"audit/{cfg.seed}/{secret}")
            candidates = draw_secrets(secrets.format, n, rng, exclude=every)
            bits = canary_exposure(model, charset, secret, candidates, preset, seed, cfg.audit.renderings, reference)
            full[group].append(bits["raw"])
            if reference is not None:
                calibrated[group].append(bits["calibrated"])
            if hidden:
                tails = draw_secrets(SecretFormat(secret[:-hidden], hidden), n_tails, rng, exclude=[secret])
                occluded[group].append(occluded_exposure(model, charset, secret, tails, hidden, preset, seed))
    block = {"node": secrets.org, "format": secrets.format.describe(), "repeats": secrets.repeats,
             "planted_lines": planted_reading(model, charset, cfg, secrets, reference),
             "full": _variant(full, n, renderings=cfg.audit.renderings)}
    if reference is not None:
        block["calibrated"] = _variant(calibrated, n, renderings=cfg.audit.renderings)
    if hidden:
        block["occluded"] = _variant(occluded, n_tails, hidden_digits=hidden)
    return block


def audit_model(model: CRNN, charset: Charset, cfg: FlConfig, secrets: Secrets | None,
                reference: CRNN | None = None) -> dict[str, Any]:
    started = time.time()
    block: dict[str, Any] = {"membership": membership(model, charset, cfg, reference)}
    if secrets is not None:
        block["canaries"] = exposures(model, charset, cfg, secrets, reference)
    block["seconds"] = round(time.time() - started, 1)
    return block


def audit_run(out: Path, candidates: int | None = None, printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Audit the run in `out` (its model.pt) and record the block in report.json and the run store."""
    report_path, model_path = out / "report.json", out / "model.pt"
    if not report_path.is_file() or not model_path.is_file():
        raise AuditError(f"{out}: not a finished run folder (needs report.json and model.pt)")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    cfg = config_of(report)
    if candidates is not None:
        cfg = cfg.with_(audit=replace(cfg.audit, candidates=candidates))
    ckpt = load_checkpoint(model_path)
    secrets = run_secrets(cfg)
    if secrets is not None:
        write_secrets(out, secrets)
    printer(f"auditing {model_path} ({cfg.federation}"
            + (f", {len(secrets.planted)} canaries x {secrets.repeats} in {secrets.org}" if secrets else "") + ")")
    reference, noted = reference_model(report, ckpt.charset)
    block = {"model": model_path.name, **noted, **audit_model(ckpt.model, ckpt.charset, cfg, secrets, reference)}
    report = json.loads(report_path.read_text(encoding="utf-8"))  # as it is now, not as it was read
    report["audit"] = block
    write_json(report_path, report)
    store_path = cfg.store_path()
    if store_path.is_file() and report.get("run_id"):
        with RunStore(store_path) as store:
            store.record_audit(report["run_id"], block)
    return block

