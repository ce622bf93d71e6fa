"""The ClientApp: an organisation trains E local epochs from the global model and sends its delta.

Thin handler (STYLE.md): unpack the message, check the vocabulary, load this node's private data,
call the one training loop (`fedocr.train.Trainer`), and reply with Δw = w_local − w_global
(FedAvg, McMahan et al. 2017), its example count, training metrics and timing. Raw images never
leave the node.

Data: in simulation a node is an organisation of the run's `federation`, picked by its
`partition-id`; in deployment the operator points the node at a folder with
`--node-config 'data-path="/abs/folder" name="hospital"'`.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedocr.data import EncodedLines, LineDataset
from fedocr.federated.config import FlConfig, local_recipe
from fedocr.federated.faults import fault_for
from fedocr.federated.orgs import folder_data, get_federation, synthetic_org_data
from fedocr.federated.updates import aggregated_keys, delta, select
from fedocr.federated.vocab import expected_charset
from fedocr.federated.weights import from_record, load_weights, model_config_from, model_weights, to_record
from fedocr.model import CRNN
from fedocr.train import TrainConfig, Trainer

LOCAL_HEAD = "fedocr-local-head"   # context.state key of the CTC head kept local ("backbone" mode)


def node_data(context: Context, cfg: FlConfig, charset: object) -> tuple[str, LineDataset]:
    """(client name, training lines) of this node."""
    node = context.node_config
    if "data-path" in node:
        name = str(node.get("name") or f"node-{context.node_id}")
        return name, folder_data(str(node["data-path"]))
    return synthetic_org_data(cfg.federation, int(node["partition-id"]), "train", cfg.lines_per_client,
                              cfg.seed, charset)  # type: ignore[arg-type]


def _threads(context: Context) -> None:
    # Simulation runs two Ray actors on a 2-core machine: one thread each avoids oversubscription.
    # A deployment node uses its machine unless the operator says otherwise.
    default = 1 if "partition-id" in context.node_config and "data-path" not in context.node_config else 0
    threads = int(context.node_config.get("threads", default))
    if threads > 0:
        torch.set_num_threads(threads)


def _local_train_config(cfg: FlConfig, n_lines: int, server_round: int, lr: float | None) -> TrainConfig:
    steps = max(1, round(cfg.local_epochs * math.ceil(n_lines / cfg.batch_size)))
    # A fresh optimizer each round (standard FedAvg).
    return local_recipe(cfg, steps, seed=cfg.seed * 1000 + server_round, lr=lr)


def handle_train(msg: Message, context: Context, overrides: dict[str, Any] | None = None) -> Message:
    """One round of local training on this node's data; the reply carries Δw or a refusal."""
    started = time.time()
    cfg = FlConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
    _threads(context)
    server = msg.content["config"]
    server_round = int(server["server-round"])
    charset = expected_charset(cfg)
    pinned = context.node_config.get("charset-version")
    mine = str(pinned) if pinned else charset.version
    name, data = node_data(context, cfg, charset)
    fault = fault_for(cfg.faults, name, server_round)
    if fault == "charset":
        mine = "0" * 16
    info = ConfigRecord({"client": name, "charset-version": mine})
    if mine != server["charset-version"]:
        info["refused"] = f"charset mismatch: server {server['charset-version']}, client {mine}"
        return Message(RecordDict({"info": info, "metrics": MetricRecord({"num-examples": 0})}), reply_to=msg)
    if fault == "crash":
        raise RuntimeError(f"drill: {name} crashes in round {server_round}")
    if fault == "hang":
        time.sleep(1.5 * cfg.round_deadline_s + 5)  # well past the deadline; the server must not wait

    model = CRNN(model_config_from(server))
    global_w = from_record(msg.content["global"])
    load_weights(model, global_w)
    if cfg.aggregate == "backbone" and LOCAL_HEAD in context.state:
        load_weights(model, from_record(context.state[LOCAL_HEAD]))  # personal head survives rounds
    start_w = model_weights(model)

    lines = EncodedLines(data, charset)
    train_started = time.time()
    lr = float(server["lr"]) if "lr" in server else None  # the server knows what the run started from
    result = Trainer(model, charset, lines, _local_train_config(cfg, len(lines), server_round, lr),
                     log=lambda _: None).fit()
    train_ended = time.time()

    local_w = model_weights(model)
    keys = aggregated_keys(local_w, cfg.aggregate)
    update = delta(select(local_w, keys), select(start_w, keys))
    if cfg.aggregate == "backbone":
        context.state[LOCAL_HEAD] = to_record({k: v for k, v in local_w.items() if k not in keys})
    if fault == "nan":
        first = next(k for k, v in update.items() if np.issubdtype(v.dtype, np.floating))
        update = {**update, first: np.full_like(update[first], np.nan)}
    elif fault == "huge":
        update = {k: (v * 1e6).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in update.items()}

    metrics = MetricRecord({
        "num-examples": len(lines), "train-loss": float(result.mean_loss), "train-steps": result.steps,
        "started": started, "train-started": train_started, "train-ended": train_ended, "ended": time.time(),
        "pid": os.getpid(),
    })
    return Message(RecordDict({"delta": to_record(update), "metrics": metrics, "info": info}), reply_to=msg)


def handle_query(msg: Message, context: Context, overrides: dict[str, Any] | None = None) -> Message:
    """Who this node is and which vocabulary it expects (no data leaves the node)."""
    cfg = FlConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
    node = context.node_config
    if "data-path" in node:
        name = str(node.get("name") or f"node-{context.node_id}")
    else:
        name = get_federation(cfg.federation).orgs[int(node["partition-id"])]
    pinned = node.get("charset-version")
    version = str(pinned) if pinned else expected_charset(cfg).version
    return Message(RecordDict({"info": ConfigRecord({"client": name, "charset-version": version})}), reply_to=msg)


def build_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose run config is Flower's plus `overrides` (hyphenated keys). `fedocr fl
    simulate` passes its command-line settings this way; `flwr run .` uses `app` below."""
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, overrides)

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, context, overrides)

    return client_app


app = build_client_app()
