"""The ClientApp: an organisation trains E local epochs from the global model and sends its update.

Thin handler (STYLE.md): unpack the message (`protocol`), check the vocabulary, load this node's
private data, call the one training loop (`fedocr.train.Trainer`), run the client chain of the
update pipeline over Δw = w_local − w_global (FedAvg, McMahan et al. 2017; then e.g. keep the
head local, Top-K, quantise), and reply. Raw images never leave the node; the steps' state
(error-feedback residuals, a personal head) is kept on the node's disk.

Data: in simulation a node is an organisation of the run's `federation`, picked by its
`partition-id`; in deployment the operator points the node at a folder with
`--node-config 'data-path="/abs/folder" name="hospital"'` (and `state-dir="/abs/folder"` for
where its steps' state lives; default: under the run's out-dir on this machine).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.client.mod import secaggplus_mod

from fedocr.charset import Charset
from fedocr.data import EncodedLines, LineDataset, SubsetLines
from fedocr.federated.config import FlConfig, local_seed, local_train_config
from fedocr.federated.node_state import default_state_path, load_node_state, save_node_state
from fedocr.data.organisations import folder_data, get_federation, synthetic_org_data
from fedocr.federated.pipeline.build import ClientChain, States, build_client_chain
from fedocr.federated.sim.canaries import plant
from fedocr.federated.sim.poison import poisoned
from fedocr.federated.pipeline.cluster import PICK, ClusterConfig, pick
from fedocr.federated.pipeline.transforms import delta
from fedocr.federated.pipeline.types import Update
from fedocr.federated.pipeline.he import SECRET, HeConfig, decrypt, load_context
from fedocr.federated.protocol import (TrainInstruction, decrypted_content, evaluate_reply_content, is_secagg_message,
                                      query_reply_content, read_decrypt, read_evaluate, read_train, refusal_content,
                                      reply, reply_content, secure_reply_content)
from fedocr.federated.validate import validation_loss
from fedocr.federated.vocab import expected_charset
from fedocr.federated.weights import load_weights, model_weights
from fedocr.model import CRNN, load_checkpoint, save_checkpoint, torch_logits_fn
from fedocr.model.checkpoint import provenance
from fedocr.train import Trainer, evaluate


def node_name(context: Context, cfg: FlConfig) -> str:
    node = context.node_config
    if "data-path" in node:
        return str(node.get("name") or f"node-{context.node_id}")
    orgs = get_federation(cfg.federation).names
    partition = int(node["partition-id"])
    if not 0 <= partition < len(orgs):
        raise ValueError(f"partition-id {partition}: federation {cfg.federation} has {len(orgs)} nodes "
                         f"({', '.join(orgs)}); run it with {len(orgs)} SuperNodes")
    return orgs[partition]


HOLD_OUT_EVERY = 10   # without a test-path, every 10th line of a node's data is held out for evaluation


def _split(context: Context, split: str) -> LineDataset:
    """A deployment node's training lines or held-out lines: its `test-path`, else every 10th line
    of its `data-path` (never trained on)."""
    node = context.node_config
    data = folder_data(str(node["data-path"]))
    if "test-path" in node:
        return data if split == "train" else folder_data(str(node["test-path"]))
    held = [i for i in range(len(data)) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    kept = [i for i in range(len(data)) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
    return SubsetLines(data, kept if split == "train" else held, f"{data.name}:{split}")


def node_data(context: Context, cfg: FlConfig, charset: object, split: str = "train") -> tuple[str, LineDataset]:
    """(client name, its training lines or, with split "test", its held-out lines) of this node."""
    node = context.node_config
    if "data-path" in node:
        return node_name(context, cfg), _split(context, split)
    node_name(context, cfg)  # refuses a partition the federation does not have
    n = cfg.lines_per_client if split == "train" else cfg.test_lines
    name, lines = synthetic_org_data(cfg.federation, int(node["partition-id"]), split, n, cfg.seed,
                                     charset)  # type: ignore[arg-type]
    if split == "train":  # the privacy audit's canaries, when the run plants any here
        lines = plant(cfg, name, lines, charset)  # type: ignore[arg-type]
    # Attack drills (simulation only): a node named for a data attack trains on poisoned lines.
    return name, poisoned(cfg.to_run_config(), name, lines, cfg.seed) if split == "train" else lines


def state_path(context: Context, cfg: FlConfig, name: str) -> Path:
    """Where this node keeps its client steps' state (one file per client name)."""
    folder = context.node_config.get("state-dir")
    return Path(str(folder)) / f"{name}.npz" if folder else default_state_path(cfg.out_path(), name)


def _threads(context: Context) -> None:
    # Simulation runs two Ray actors on a 2-core machine: one thread each avoids oversubscription.
    # A deployment node uses its machine unless the operator says otherwise.
    default = 1 if "partition-id" in context.node_config and "data-path" not in context.node_config else 0
    threads = int(context.node_config.get("threads", default))
    if threads > 0:
        torch.set_num_threads(threads)


def handle_train(msg: Message, context: Context, overrides: dict[str, Any] | None = None) -> Message:
    """One round of local training on this node's data; the reply carries the update or a refusal."""
    started = time.time()
    cfg = FlConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
    _threads(context)
    task = read_train(msg.content)
    charset = expected_charset(cfg)
    pinned = context.node_config.get("charset-version")
    mine = str(pinned) if pinned else charset.version
    name, data = node_data(context, cfg, charset)
    if mine != task.charset_version:
        return refuse(msg, task, name, mine, f"charset mismatch: server {task.charset_version}, client {mine}")

    chain = build_client_chain(chain_config(context, cfg))
    path = state_path(context, cfg, name)
    states = load_node_state(path, task.run_id)
    lines = EncodedLines(data, charset)
    recipe = local_train_config(cfg, len(lines), local_seed(cfg.seed, name, task.round), task.lr)
    sample_rate = min(1.0, recipe.batch_size / len(lines))
    settings, refusal = chain.prepare(states, task.round, len(lines), sample_rate, recipe.max_steps or 1)
    if refusal:  # e.g. its privacy budget is spent: the node says why instead of training
        save_node_state(path, task.run_id, states)
        return refuse(msg, task, name, mine, refusal)
    picked, losses = pick_cluster(cfg, task, data, charset)
    model = CRNN(task.model_config)
    start_w = chain.start_weights(task.clusters[picked] if task.clusters else task.weights, states)
    load_weights(model, start_w)
    train_started = time.time()
    result = Trainer(model, charset, lines, dataclasses.replace(recipe, **settings), log=lambda _: None).fit()
    train_ended = time.time()

    if chain.personal():   # Ditto: the node's own model, after the global one, kept on its disk
        train_personal(cfg, chain, states, task, lines, charset, name)
    update = Update(name, delta(model_weights(model), start_w), len(lines),
                    {"train-loss": float(result.mean_loss), "train-steps": result.steps, "sample-rate": sample_rate})
    if task.clusters:   # IFCA: which of the k models this update trained, and the losses it picked by
        update = update.noted(PICK, cluster=picked, losses=losses)
    update = chain.run(update, task.round, cfg.seed, start_w, states, task.step_task())
    if states:
        save_node_state(path, task.run_id, states)
    metrics = {"train-loss": float(result.mean_loss), "train-steps": result.steps, "started": started,
               "train-started": train_started, "train-ended": train_ended, "ended": time.time(), "pid": os.getpid(),
               **({"cluster": picked} if task.clusters else {})}
    if task.secure_keys is None:
        return reply(msg, reply_content(update, mine, metrics, task))
    missing = [k for k in task.secure_keys if k not in update.tensors]
    if missing or len(update.tensors) != len(task.secure_keys):
        raise ValueError(f"secure aggregation: this node's update has other tensors than the server sums "
                         f"(missing {missing[:3]})")
    return reply(msg, secure_reply_content(name, mine, [update.tensors[k] for k in task.secure_keys], update.examples,
                                           metrics, update.records))


def pick_cluster(cfg: FlConfig, task: TrainInstruction, data: LineDataset, charset: Charset) -> tuple[int, list[float]]:
    """IFCA (pipeline.cluster): the index of the model, of a clustered run's k, with the lowest CTC
    loss on this node's first `cluster.pick-lines` training lines, and the k losses; (0, []) when
    the task carries one model."""
    if not task.clusters:
        return 0, []
    count = min(ClusterConfig.from_run_config(cfg.steps).pick_lines, len(data))
    lines = SubsetLines(data, range(count), f"{data.name}[:{count}]")
    model = CRNN(task.model_config)
    losses = [validation_loss(load_weights(model, weights), charset, lines) for weights in task.clusters]
    return pick(losses), losses


def chain_config(context: Context, cfg: FlConfig) -> dict[str, Any]:
    """The run config the client chain is built from, with this node's own key folder for HE
    (`--node-config 'he-keys="/abs/folder"'`; simulated nodes share the run's)."""
    rc = cfg.to_run_config()
    if "he-keys" in context.node_config:
        rc["he.keys"] = str(context.node_config["he-keys"])
    return rc


def handle_decrypt(msg: Message, context: Context, overrides: dict[str, Any] | None = None) -> Message:
    """HE: decrypt the round's summed ciphertexts with this node's secret key. The server sends only
    the sum of the nodes' ciphertexts, so this node learns the sum, as the server will."""
    cfg = FlConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
    config = HeConfig.from_run_config(chain_config(context, cfg))
    ciphertexts, length = read_decrypt(msg.content)
    return reply(msg, decrypted_content(decrypt(ciphertexts, load_context(config.folder / SECRET, True), length)))


def refuse(msg: Message, task: TrainInstruction, name: str, charset_version: str, reason: str) -> Message:
    """A node that will not train this round says why; under secure aggregation it still takes part
    in the protocol, with zeros weighted by 0 examples, so its neighbours' masks cancel."""
    if task.secure_keys is None:
        return reply(msg, refusal_content(name, charset_version, reason))
    zeros = [np.zeros_like(task.weights[k]) for k in task.secure_keys]
    return reply(msg, secure_reply_content(name, charset_version, zeros, 0, {}, refused=reason))


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ mod for the messages of secure rounds; every other message passes through
    (the mod refuses messages that do not carry its protocol's records)."""
    if msg.metadata.message_type == MessageType.TRAIN and is_secagg_message(msg.content):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def train_personal(cfg: FlConfig, chain: ClientChain, states: States, task: TrainInstruction, lines: EncodedLines,
                   charset: Charset, name: str) -> None:
    """Ditto's personal step: train the node's personal model on its lines with the proximal term
    towards this round's global model (pipeline.personal), and keep it in the node's state."""
    ditto = chain.personal()
    assert ditto is not None
    model = CRNN(task.model_config)
    load_weights(model, chain.personal_start(task.weights, states))
    anchor = {k: torch.from_numpy(np.array(v)) for k, v in task.weights.items()}
    recipe = local_train_config(cfg, len(lines), local_seed(cfg.seed, f"{name}/personal", task.round), task.lr,
                                 epochs=ditto.config.epochs)
    Trainer(model, charset, lines, dataclasses.replace(recipe, prox_mu=ditto.config.lam), anchor=anchor,
            log=lambda _: None).fit()
    chain.keep_personal(model_weights(model), states)


def local_only_model(cfg: FlConfig, context: Context, name: str, run_id: str, charset: Charset) -> CRNN:
    """This node's local-only baseline (its own lines, the federation's recipe and budget), trained
    once per run and kept on the node's disk."""
    from fedocr.federated.sim.baselines import train_baseline

    path = state_path(context, cfg, name).with_name(f"{name}.local-only.pt")
    if path.is_file():
        ckpt = load_checkpoint(path)
        if ckpt.provenance.get("run_id") == run_id:
            return ckpt.model
    model = train_baseline(cfg, charset, node_data(context, cfg, charset)[1])
    save_checkpoint(path, model, charset, provenance(kind="local-only", org=name, run_id=run_id))
    return model


def handle_evaluate(msg: Message, context: Context, overrides: dict[str, Any] | None = None) -> Message:
    """Federated evaluation: the global model (with this node's personal state, e.g. its own
    head) on this node's held-out lines; only the scores leave the node."""
    cfg = FlConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
    _threads(context)
    task, local_baseline = read_evaluate(msg.content)
    charset = expected_charset(cfg)
    name, held_out = node_data(context, cfg, charset, "test")
    chain = build_client_chain(chain_config(context, cfg))
    model = CRNN(task.model_config)
    states = load_node_state(state_path(context, cfg, name), task.run_id)
    picked, _ = pick_cluster(cfg, task, node_data(context, cfg, charset)[1], charset)
    load_weights(model, chain.personal_weights(task.clusters[picked] if task.clusters else task.weights, states))
    report = evaluate(torch_logits_fn(model), charset, held_out)
    metrics = {"cer": report.cer, "line-accuracy": report.line_accuracy, "lines": report.n,
               **({"cluster": picked} if task.clusters else {})}
    if chain.personal():   # Ditto: the global model on the same lines, for the personal model's gain
        load_weights(model, task.weights)
        metrics["global-cer"] = evaluate(torch_logits_fn(model), charset, held_out).cer
    if local_baseline:
        local = evaluate(torch_logits_fn(local_only_model(cfg, context, name, task.run_id, charset)), charset, held_out)
        metrics.update({"local-only-cer": local.cer, "local-only-line-accuracy": local.line_accuracy})
    return reply(msg, evaluate_reply_content(name, charset.version, metrics))


def handle_query(msg: Message, context: Context, overrides: dict[str, Any] | None = None) -> Message:
    """Who this node is and which vocabulary it expects (no data leaves the node)."""
    cfg = FlConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
    pinned = context.node_config.get("charset-version")
    version = str(pinned) if pinned else expected_charset(cfg).version
    simulated = "data-path" not in context.node_config
    return reply(msg, query_reply_content(node_name(context, cfg), version, simulated))


def build_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose run config is Flower's plus `overrides` (hyphenated keys). `fedocr fl
    simulate` passes its command-line settings this way; `flwr run .` uses `app` below."""
    client_app = ClientApp(mods=[secure_mod])

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, overrides)

    @client_app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, overrides)

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, context, overrides)

    @client_app.query("decrypt")
    def decrypt_(msg: Message, context: Context) -> Message:
        return handle_decrypt(msg, context, overrides)

    return client_app


app = build_client_app()
