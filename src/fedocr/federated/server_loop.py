"""The server's round loop: sample, send, collect until the deadline, screen, aggregate, validate,
checkpoint and record. Flower-agnostic except for the `Grid` it talks through, so the same loop
runs under the simulation engine and the deployment engine.

Per round (DESIGN.md, the update pipeline, server side): check each update (names, shapes,
dtypes, finite, norm bound) -> example-weighted average of the accepted deltas (FedAvg,
McMahan et al. 2017) -> apply to w, but only when at least `min-accepted` updates passed (the
participation threshold) -> validate on the public set -> save the round's model atomically,
export the best -> write the round to the run store -> checkpoint the server state, so a
restarted server resumes after the last completed round.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedocr.charset import Charset
from fedocr.data import LineDataset
from fedocr.federated.config import FlConfig
from fedocr.federated.orgs import public_lines
from fedocr.federated.report import build_report, write_json
from fedocr.federated.state import ServerState
from fedocr.federated.store import ClientRecord, RoundRecord, RunStore
from fedocr.federated.timing import union_seconds
from fedocr.federated.updates import (Weights, aggregated_keys, apply_update, check_examples, check_update, l2_norm,
                                      payload_bytes, sample_clients, select, server_momentum,
                                      weighted_average)
from fedocr.federated.validate import server_validation, validate
from fedocr.federated.vocab import initial_model
from fedocr.federated.weights import from_record, load_weights, model_config_record, model_weights, to_record
from fedocr.model import CRNN, save_checkpoint
from fedocr.model.checkpoint import provenance

log = logging.getLogger("fedocr.federated")
Printer = Callable[[str], None]


class NotEnoughNodes(RuntimeError):
    """Fewer nodes connected than the participation threshold, for longer than allowed."""


MAX_NAME = 64   # a client's self-reported name is shown and stored; keep it short


@dataclass
class Screened:
    record: ClientRecord
    update: Weights | None      # set when accepted
    busy: tuple[float, float] | None = None       # (started, ended) of the client's handler
    training: tuple[float, float] | None = None   # (train-started, train-ended)


class MalformedMetrics(ValueError):
    """A reply's metrics that are missing, of the wrong type or not finite."""


def _metric(metrics: object, key: str, default: float | None = None) -> float:
    """One numeric metric of a reply, read defensively: the client controls its reply."""
    value = metrics.get(key, default)  # type: ignore[attr-defined]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise MalformedMetrics(f"{key}: {value!r}")
    return float(value)


def unique_name(name: str, node_id: str, taken: set[str]) -> str:
    """`name`, or `name#<node id>` when another node of the round already uses it: names come from
    the clients, and two nodes with one name must not share (or overwrite) a store row."""
    name = name[:MAX_NAME] or f"node-{node_id}"
    candidate, n = name, 1
    while candidate in taken:
        candidate = f"{name}#{node_id}" if n == 1 else f"{name}#{node_id}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def screen_reply(reply: Message, node_name: str, reference: Weights, cfg: FlConfig, charset_version: str,
                 bytes_down: int) -> Screened:
    """Turn one reply into an accepted update or a recorded rejection (never an exception)."""
    node_id = str(reply.metadata.src_node_id)
    if reply.has_error():
        reason = (reply.error.reason or f"error code {reply.error.code}").strip().splitlines()
        return Screened(ClientRecord(node_name, node_id, False, f"client failed: {reason[-1][:300] if reason else ''}",
                                     bytes_down=bytes_down), None)
    content = reply.content
    info = content["info"] if "info" in content.config_records else ConfigRecord()
    name = str(info.get("client", node_name))
    metrics = content["metrics"] if "metrics" in content.metric_records else {}
    rec = ClientRecord(name, node_id, False, None, bytes_down=bytes_down)
    busy = training = None
    try:
        examples = _metric(metrics, "num-examples", 0)
        if not examples.is_integer():
            raise MalformedMetrics(f"num-examples: {examples!r}")
        rec.examples = int(examples)
        rec.loss = None if metrics.get("train-loss") is None else _metric(metrics, "train-loss")
        if "train-started" in metrics:
            training = (_metric(metrics, "train-started"), _metric(metrics, "train-ended"))
            busy = (_metric(metrics, "started"), _metric(metrics, "ended"))
            rec.train_seconds = training[1] - training[0]
            rec.client_seconds = busy[1] - busy[0]
    except MalformedMetrics as exc:
        rec.reason = f"malformed metrics ({str(exc)[:100]})"
        return Screened(rec, None)
    screened = Screened(rec, None, busy, training)
    if "refused" in info:
        rec.reason = str(info["refused"])
        return screened
    if info.get("charset-version") != charset_version:
        rec.reason = f"charset mismatch: server {charset_version}, client {info.get('charset-version')}"
        return screened
    if "delta" not in content.array_records:
        rec.reason = "reply carries no update"
        return screened
    try:
        update = from_record(content["delta"])
    except Exception as exc:  # a malformed array must not end the round
        rec.reason = f"unreadable update ({type(exc).__name__})"
        return screened
    rec.bytes_up = payload_bytes(update)
    reason = check_examples(rec.examples, cfg.max_examples)
    if reason:
        rec.reason = reason
        return screened
    reason = check_update(update, reference, cfg.max_update_norm)
    if reason is None or reason.startswith("update norm"):  # the norm means something only then
        rec.update_norm = l2_norm(update)
    if reason:
        rec.reason = reason
        return screened
    rec.accepted = True
    screened.update = update
    return screened


class FederatedServer:
    """One federated run: its config, global model, validation set, store and output folder."""

    def __init__(self, cfg: FlConfig, flower_run_id: int | None = None, printer: Printer = print) -> None:
        self.cfg, self.print = cfg, printer
        self.out = cfg.out_path()
        self.out.mkdir(parents=True, exist_ok=True)
        model, charset, self.init_desc = initial_model(cfg)
        self.model: CRNN = model
        self.charset: Charset = charset
        state = ServerState.load(self.out)
        if state is not None and state.charset_version != charset.version:
            raise RuntimeError(f"{self.out}: holds a run on charset {state.charset_version}, this config uses "
                               f"{charset.version}; use another out-dir")
        self.resumed = state is not None and state.round > 0
        self.state = state or ServerState.fresh(model_weights(model), charset.version)
        self.keys = aggregated_keys(self.state.weights, cfg.aggregate)
        self.store = RunStore(cfg.store_path())
        self.store.start_run(self.state.run_id, cfg.run_name or self.out.name,
                             # lr_resolved: the peak local rate; each round records the rate it sent
                             {**cfg.to_dict(), "initial_model_resolved": self.init_desc, "lr_resolved": cfg.local_lr(),
                              "charset_version": charset.version}, cfg.federation, str(self.out), flower_run_id)
        try:
            self.val: LineDataset = public_lines(cfg.federation, cfg.val_lines, cfg.seed, charset.version, charset)
        except BaseException as exc:
            self.store.finish_run(self.state.run_id, "failed", error=f"validation set: {type(exc).__name__}: {exc}")
            raise

    # -- one round -------------------------------------------------------------------------
    def _nodes(self, grid: Grid) -> list[int]:
        deadline = time.time() + self.cfg.wait_for_nodes_s
        last_note = 0.0
        while True:
            nodes = list(grid.get_node_ids())
            if len(nodes) >= self.cfg.min_accepted:
                return nodes
            if time.time() > deadline:
                raise NotEnoughNodes(f"only {len(nodes)} node(s) connected after {self.cfg.wait_for_nodes_s:.0f} s; "
                                     f"the participation threshold is {self.cfg.min_accepted}")
            if time.time() - last_note > 10:
                self.print(f"waiting for nodes: {len(nodes)}/{self.cfg.min_accepted} connected")
                last_note = time.time()
            time.sleep(1.0)

    def run_round(self, grid: Grid, rnd: int) -> RoundRecord:
        cfg, state = self.cfg, self.state
        nodes = self._nodes(grid)
        sampled = sample_clients(nodes, cfg.clients_per_round(len(nodes)), np.random.default_rng([cfg.seed, rnd]))
        down = state.weights  # all tensors travel down (a new node needs the head too)
        config = model_config_record(self.model.config)
        lr = cfg.round_lr(rnd)  # sent to the clients and recorded with the round: one value for both
        config.update({"server-round": rnd, "charset-version": self.charset.version, "lr": lr})
        content = RecordDict({"global": to_record(down), "config": config})
        bytes_down = payload_bytes(down)
        messages = [Message(content, node, "train", group_id=str(rnd), ttl=cfg.round_deadline_s + 30)
                    for node in sampled]
        t0 = time.time()
        replies = list(grid.send_and_receive(messages, timeout=cfg.round_deadline_s))
        t1 = time.time()

        reference = select(state.weights, self.keys)
        screened: list[Screened] = []
        seen: set[int] = set()
        busy, training = [], []
        taken: set[str] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            seen.add(node)
            s = screen_reply(reply, state.names.get(str(node), f"node-{node}"), reference, cfg,
                             self.charset.version, bytes_down)
            s.record.client = unique_name(s.record.client, str(node), taken)
            state.names[str(node)] = s.record.client
            screened.append(s)
            if s.busy is not None and s.training is not None:
                busy.append(s.busy)
                training.append(s.training)
        for node in sampled:
            if node not in seen:
                name = unique_name(state.names.get(str(node), f"node-{node}"), str(node), taken)
                screened.append(Screened(ClientRecord(name, str(node), False, f"dropped: no reply within the "
                                                      f"{cfg.round_deadline_s:g} s deadline (straggler, crash or "
                                                      f"disconnect)", bytes_down=bytes_down), None))
        accepted = [(s.update, s.record.examples) for s in screened if s.update is not None]
        applied = len(accepted) >= cfg.min_accepted
        note = None
        if applied:
            step = weighted_average(accepted)  # type: ignore[arg-type]
            if cfg.server_momentum:
                state.velocity = step = server_momentum(state.velocity, step, cfg.server_momentum)
                state.strategy = {"name": "fedavgm", "momentum": cfg.server_momentum}
            else:  # a velocity left by an earlier FedAvgM sitting must not come back later
                state.velocity, state.strategy = None, {"name": "fedavg"}
            state.weights = apply_update(state.weights, step, cfg.server_lr)
        else:
            note = f"not applied: {len(accepted)} accepted update(s) < threshold {cfg.min_accepted}"
            self.print(f"round {rnd}: {note}")
        load_weights(self.model, state.weights)
        v0 = time.time()
        val_cer, val_loss, val_note = server_validation(self.model, self.charset, self.val, cfg.aggregate)
        note = "; ".join(n for n in (note, val_note) if n) or None
        val_seconds = time.time() - v0
        train_s, busy_s = union_seconds(training, t0, t1), union_seconds(busy, t0, t1)
        return RoundRecord(round=rnd, seconds=t1 - t0, sampled=len(sampled), accepted=len(accepted), applied=applied,
                           lr=lr,
                           train_seconds=train_s, overhead_seconds=max(0.0, (t1 - t0) - busy_s),
                           val_seconds=val_seconds, val_cer=val_cer, val_loss=val_loss, note=note,
                           clients=sorted((s.record for s in screened), key=lambda c: c.client))

    def _save_round(self, record: RoundRecord) -> None:
        """Round model, best model, store row, then the state: in that order, so a kill at any
        point leaves either the previous round's state or this round's, never a mix."""
        rnd, state = record.round, self.state
        prov = provenance(kind="federated", run_id=state.run_id, round=rnd, federation=self.cfg.federation,
                          seed=self.cfg.seed, initial_model=self.init_desc, aggregate=self.cfg.aggregate)
        save_checkpoint(self.out / f"round-{rnd}.pt", self.model, self.charset, prov)
        if record.val_cer is None:  # no meaningful server-side score (backbone mode): the latest round
            state.best_round = rnd
            save_checkpoint(self.out / "model.pt", self.model, self.charset, {**prov, "latest_of_rounds": rnd})
        elif state.best_cer is None or record.val_cer < state.best_cer:
            state.best_cer, state.best_round = record.val_cer, rnd
            save_checkpoint(self.out / "model.pt", self.model, self.charset, {**prov, "best_of_rounds": rnd})
        self.store.record_round(state.run_id, record)
        state.round = rnd
        state.save(self.out)

    def introduce(self, grid: Grid) -> None:
        """Ask every connected node its name and vocabulary before round 1, so a node that later
        drops is recorded by name, and a vocabulary mismatch is reported before any training."""
        nodes = self._nodes(grid)
        config = ConfigRecord({"charset-version": self.charset.version})
        messages = [Message(RecordDict({"config": config}), node, "query", ttl=120.0) for node in nodes]
        taken: set[str] = set()
        for reply in grid.send_and_receive(messages, timeout=min(60.0, self.cfg.round_deadline_s)):
            if reply.has_error() or "info" not in reply.content.config_records:
                continue
            info, node = reply.content["info"], str(reply.metadata.src_node_id)
            name = unique_name(str(info.get("client", f"node-{node}")), node, taken)
            self.state.names[node] = name
            if info.get("charset-version") != self.charset.version:
                self.print(f"node {name}: charset {info.get('charset-version')} differs from the "
                           f"server's {self.charset.version}; its updates will be refused")
        self.print(f"nodes: {', '.join(sorted(self.state.names.values())) or 'none answered'}")

    def run(self, grid: Grid) -> dict:
        cfg, state = self.cfg, self.state
        if self.resumed:
            self.print(f"resuming run {state.run_id} after round {state.round}/{cfg.num_rounds}")
        status, error = "failed", "the ServerApp stopped unexpectedly"
        try:
            if state.round == 0:
                load_weights(self.model, state.weights)
                cer, loss = validate(self.model, self.charset, self.val)
                self.print(f"round 0: initial model ({self.init_desc}) val CER {cer:.4f}")
            if state.round < cfg.num_rounds:
                self.introduce(grid)
            for rnd in range(state.round + 1, cfg.num_rounds + 1):
                record = self.run_round(grid, rnd)
                self._save_round(record)
                cer = "n/a" if record.val_cer is None else f"{record.val_cer:.4f}"
                self.print(f"round {rnd}/{cfg.num_rounds}  accepted {record.accepted}/{record.sampled}  "
                           f"val CER {cer}  {record.seconds + (record.val_seconds or 0):.1f} s"
                           + ("" if record.applied else "  (not applied)"))
                for client in record.clients:
                    if not client.accepted:
                        self.print(f"    {client.client}: {client.reason}")
            status, error = "finished", None
        except NotEnoughNodes as exc:
            status, error = "stalled", str(exc)
            self.print(f"run stopped after round {state.round}: {exc}")
        except BaseException as exc:  # recorded, then re-raised: a dead run must not stay "running"
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            self.print(f"run failed after round {state.round}: {error}")
            raise
        finally:
            self.store.finish_run(state.run_id, status, error=error)
            report = build_report(self.store, state.run_id)
            write_json(self.out / "report.json", report)
        return report
