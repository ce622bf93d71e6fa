"""The one place that knows Flower's message keys and records (docs/ARCHITECTURE.md).

Down (train): `global` (ArrayRecord of the travelling weights) + `config` (round, run id,
vocabulary version, local rate, model shape). Up: `delta` (the update's tensors as the client
chain left them: possibly sparse or quantised), `metrics` (example count, loss, timing),
`info` (client name, vocabulary version, a refusal) and `steps` (what each client step did, as
JSON). Everything the client sends is read defensively: a malformed reply becomes a recorded
rejection, never an exception. `bytes_up`/`bytes_down` are the serialized size of the content
as Flower sends it (protobuf), measured before any decoding.

Under secure aggregation (Flower's SecAgg+, a legacy-API protocol) the train task travels as
Flower's `FitIns` records (the weights as an ordered list, their names in the config) and the
reply as `FitRes` records: Flower's `secaggplus_mod` masks the reply's parameters and the server's
workflow reads them; the node's name, vocabulary, metrics and step records ride in the FitRes
metrics, in the clear.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import flwr.compat.common.recorddict_compat as compat
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.serde import recorddict_to_proto

from fedocr.federated.identity import Registry
from fedocr.federated.pipeline.checks import tensor_digest
from fedocr.federated.pipeline.he import as_arrays, from_arrays
from fedocr.federated.pipeline.types import StepRecord, Update, Weights
from fedocr.federated.runs.store import ClientRecord
from fedocr.federated.weights import c_order
from fedocr.model import ModelConfig

MAX_STEP_RECORDS = 16_384  # characters of a client's step records kept (the client controls them)


class MalformedMetrics(ValueError):
    """A reply's metrics that are missing, of the wrong type or not finite."""


def to_record(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: Array(c_order(v)) for k, v in weights.items()})


def from_record(record: ArrayRecord) -> Weights:
    return {k: arr.numpy() for k, arr in record.items()}


def wire_bytes(content: RecordDict) -> int:
    """Bytes of the message content as serialized for transport."""
    return int(recorddict_to_proto(content).ByteSize())


def model_config_record(config: ModelConfig) -> ConfigRecord:
    return ConfigRecord({f"model-{k}": v for k, v in config.to_dict().items()})


def model_config_from(record: ConfigRecord) -> ModelConfig:
    values: dict[str, Any] = {k[len("model-"):]: v for k, v in record.items() if k.startswith("model-")}
    return ModelConfig(**values)


# -- messages -----------------------------------------------------------------------------------
TRAIN, EVALUATE, QUERY = "train", "evaluate", "query"   # the ClientApp handlers' message types


def to_nodes(content: RecordDict, nodes: list[int], kind: str, ttl: float, group: str = "") -> list[Message]:
    """One message of `kind` with `content` for each node."""
    return [Message(content, node, kind, group_id=group, ttl=ttl) for node in nodes]


def reply(msg: Message, content: RecordDict) -> Message:
    return Message(content, reply_to=msg)


# -- down ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainInstruction:
    round: int
    weights: Weights
    model_config: ModelConfig
    charset_version: str
    lr: float | None       # the local rate the server resolved for this round
    run_id: str
    secure_keys: tuple[str, ...] | None = None   # under secure aggregation: the tensors to send, in order
    hints: Mapping[str, np.ndarray] = field(default_factory=dict)   # for the client steps (HE's index set)
    digest: str = ""       # the global model's digest: the reply names the round and model it answers
    sampled: int = 0       # nodes sampled this round (distributed DP noise divides by it)
    clusters: tuple[Weights, ...] = ()   # a clustered run's k models (the first is `weights`); the node picks one

    def step_task(self) -> dict[str, Any]:
        """What the task says to the client steps: its hints and the round's sample size."""
        return {**self.hints, "sampled": self.sampled}


OTHER_MODEL = "cluster-"   # records `cluster-1` ... `cluster-<k-1>`: a clustered run's other models


def train_content(weights: Weights, model_config: ModelConfig, server_round: int, charset_version: str, lr: float,
                  run_id: str, hints: Weights | None = None, sampled: int = 0,
                  others: Sequence[Weights] = ()) -> RecordDict:
    """The round's task; `others`: a clustered run's models after `weights` (cluster 0)."""
    config = model_config_record(model_config)
    config.update({"server-round": server_round, "charset-version": charset_version, "lr": lr, "run-id": run_id,
                   "global-digest": tensor_digest(weights), "sampled": sampled})
    content = RecordDict({"global": to_record(weights), "config": config})
    if hints:
        content["hints"] = to_record(hints)
    for i, other in enumerate(others, 1):
        content[f"{OTHER_MODEL}{i}"] = to_record(other)
    return content


def read_train(content: RecordDict) -> TrainInstruction:
    if is_secure_train(content):
        ins = compat.recorddict_to_fitins(content, keep_input=True)
        config = ConfigRecord(dict(ins.config))  # type: ignore[arg-type]
        weights = dict(zip(json.loads(str(config["weight-keys"])), parameters_to_ndarrays(ins.parameters)))
        secure_keys: tuple[str, ...] | None = tuple(json.loads(str(config["tensor-keys"])))
    else:
        config, weights, secure_keys = content["config"], from_record(content["global"]), None
    hints = from_record(content["hints"]) if "hints" in content.array_records else {}
    others = []
    while f"{OTHER_MODEL}{len(others) + 1}" in content.array_records:
        others.append(from_record(content[f"{OTHER_MODEL}{len(others) + 1}"]))
    return TrainInstruction(int(config["server-round"]), weights, model_config_from(config),
                            str(config["charset-version"]), float(config["lr"]) if "lr" in config else None,
                            str(config.get("run-id", "")), secure_keys, hints, str(config.get("global-digest", "")),
                            int(config.get("sampled", 0)), (weights, *others) if others else ())


def evaluate_content(weights: Weights, model_config: ModelConfig, server_round: int, charset_version: str, run_id: str,
                     local_baseline: bool, others: Sequence[Weights] = ()) -> RecordDict:
    """Federated evaluation: the committed model (or a clustered run's k models), to score on the
    node's own held-out lines."""
    content = train_content(weights, model_config, server_round, charset_version, 0.0, run_id, others=others)
    content["config"]["local-baseline"] = local_baseline
    return content


def read_evaluate(content: RecordDict) -> tuple[TrainInstruction, bool]:
    return read_train(content), bool(content["config"].get("local-baseline", False))


EVAL_METRICS = ("cer", "line-accuracy", "lines", "local-only-cer", "local-only-line-accuracy", "global-cer", "cluster")


def evaluate_reply_content(client: str, charset_version: str, metrics: dict[str, float]) -> RecordDict:
    """Scores only: a node never sends its lines."""
    return RecordDict({"info": info_record(client, charset_version), "metrics": MetricRecord(metrics)})


def read_evaluate_reply(reply: Message) -> tuple[str, dict[str, float]] | None:
    """(client name, its scores) from an evaluation reply, or None for a failed or malformed one."""
    if reply.has_error() or "metrics" not in reply.content.metric_records or "info" not in reply.content.config_records:
        return None
    metrics = reply.content["metrics"]
    try:
        scores = {k.replace("-", "_"): _metric(metrics, k) for k in EVAL_METRICS if k in metrics}
    except MalformedMetrics:
        return None
    return (str(reply.content["info"].get("client", "")), scores) if "cer" in scores else None


def query_content(charset_version: str) -> RecordDict:
    return RecordDict({"config": ConfigRecord({"charset-version": charset_version})})


# -- secure aggregation (Flower's SecAgg+ over legacy FitIns/FitRes records) -----------------------
def secure_fit_ins(weights: Weights, keys: list[str], model_config: ModelConfig, server_round: int,
                   charset_version: str, lr: float, run_id: str, sampled: int) -> FitIns:
    """The train task as SecAgg+ sends it: every tensor down, and the names of those to send up."""
    config = dict(train_content({}, model_config, server_round, charset_version, lr, run_id, sampled=sampled)["config"])
    config.update({"weight-keys": json.dumps(list(weights)), "tensor-keys": json.dumps(keys)})
    return FitIns(ndarrays_to_parameters([c_order(v) for v in weights.values()]), config)  # type: ignore[arg-type]


def is_secure_train(content: RecordDict) -> bool:
    return "fitins.parameters" in content.array_records


def is_secagg_message(content: RecordDict) -> bool:
    """A message of Flower's SecAgg+ protocol (any of its four stages)."""
    return RECORD_KEY_CONFIGS in content.config_records


def secure_reply_content(client: str, charset_version: str, tensors: list[np.ndarray], examples: int,
                         metrics: dict[str, float | int], records: tuple[StepRecord, ...] = (),
                         refused: str | None = None) -> RecordDict:
    """A FitRes for Flower's mod to mask: the tensors in the server's order, weighted by `examples`."""
    clear: dict[str, Any] = {**metrics, "client": client, "charset-version": charset_version,
                             "steps": json.dumps([{"step": r.step, "info": r.info} for r in records], default=float)}
    if refused:
        clear["refused"] = refused
    # Integer buffers (BatchNorm's step counter) go as floats, and scalars as 1-element vectors:
    # SecAgg+ quantises float entries, and its masks of a 0-d array do not cancel.
    sent = [c_order(np.atleast_1d(t.astype(np.float32) if np.issubdtype(t.dtype, np.integer) else t)) for t in tensors]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(sent), examples, clear)
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def read_secure_reply(node_id: int, fitres: FitRes, node_name: str, charset_version: str,
                      registry: Registry = Registry()) -> Received:
    """One node's clear part of a secure round: its name, claimed examples, metrics and step
    records; its update is inside the sum. Read defensively, like `read_reply`."""
    metrics = dict(fitres.metrics)
    name, impostor = registry.identify(str(metrics.get("client", node_name)), str(node_id))
    rec = ClientRecord(name, str(node_id), False, None, examples=int(fitres.num_examples))
    received = Received(rec, None)
    try:
        _read_training(metrics, received)
    except MalformedMetrics as exc:
        rec.reason = f"malformed metrics ({str(exc)[:100]})"
        received.busy = received.training = None
    rec.reason = rec.reason or impostor or _refusal(metrics, charset_version)
    records = _step_records(str(metrics.get("steps", "[]")), name)
    received.update = Update(name, {}, rec.examples, records=records)   # records only: the tensors are in the sum
    return received


def secure_sum(fitres: FitRes, keys: list[str], reference: Weights) -> Weights:
    """The unmasked weighted mean as named tensors in the reference's dtypes (integer buffers rounded)."""
    arrays = parameters_to_ndarrays(fitres.parameters)
    if len(arrays) != len(keys):
        raise ValueError(f"the secure sum has {len(arrays)} tensors, the model sends {len(keys)}")
    out: Weights = {}
    for key, array in zip(keys, arrays):
        ref = reference[key]
        out[key] = (np.rint(array) if np.issubdtype(ref.dtype, np.integer) else array).astype(ref.dtype).reshape(ref.shape)
    return out


# -- homomorphic encryption: one node decrypts the round's summed ciphertexts ----------------------
DECRYPT = "query.decrypt"


def decrypt_content(ciphertexts: list[bytes], length: int) -> RecordDict:
    return RecordDict({"he-sum": to_record(as_arrays(ciphertexts)), "config": ConfigRecord({"length": length})})


def read_decrypt(content: RecordDict) -> tuple[list[bytes], int]:
    return from_arrays(from_record(content["he-sum"])), int(content["config"]["length"])


def decrypted_content(values: np.ndarray) -> RecordDict:
    return RecordDict({"sum": ArrayRecord({"values": Array(np.ascontiguousarray(values, dtype=np.float64))})})


def read_decrypted(reply: Message, length: int) -> np.ndarray | None:
    """The decrypted sum from a node's reply, or None for a failed or malformed one."""
    if reply.has_error() or "sum" not in reply.content.array_records:
        return None
    values = reply.content["sum"].get("values")
    if values is None:
        return None
    array = values.numpy()
    ok = array.dtype == np.float64 and array.shape == (length,) and bool(np.all(np.isfinite(array)))
    return array if ok else None


# -- up -----------------------------------------------------------------------------------------
def info_record(client: str, charset_version: str) -> ConfigRecord:
    return ConfigRecord({"client": client, "charset-version": charset_version})


def refusal_content(client: str, charset_version: str, reason: str) -> RecordDict:
    info = info_record(client, charset_version)
    info["refused"] = reason
    return RecordDict({"info": info, "metrics": MetricRecord({"num-examples": 0})})


def reply_content(update: Update, charset_version: str, metrics: dict[str, float | int],
                  answers: TrainInstruction | None = None) -> RecordDict:
    """An update, naming the task (round and model digest) it `answers`."""
    info = info_record(update.client, update.meta.get("charset-version", charset_version))
    if answers is not None:
        info.update({"answers-round": answers.round, "answers-model": answers.digest})
    steps = json.dumps([{"step": r.step, "info": r.info} for r in update.records], default=float)
    return RecordDict({"delta": to_record(update.tensors),
                       "metrics": MetricRecord({"num-examples": update.examples, **metrics}), "info": info,
                       "steps": ConfigRecord({"records": steps})})


@dataclass(frozen=True)
class NodeInfo:
    client: str
    charset_version: str
    simulated: bool     # a virtual SuperNode of a synthetic organisation (simulation engine)


def query_reply_content(client: str, charset_version: str, simulated: bool) -> RecordDict:
    info = info_record(client, charset_version)
    info["simulated"] = simulated
    return RecordDict({"info": info})


def read_query_reply(reply: Message) -> NodeInfo | None:
    """Who a node is, from its query reply, or None for an unusable one."""
    if reply.has_error() or "info" not in reply.content.config_records:
        return None
    info = reply.content["info"]
    return NodeInfo(str(info.get("client", "")), str(info.get("charset-version")), info.get("simulated") is True)


@dataclass
class Received:
    """One reply as read: its store record, its update (None when refused or unreadable), and the
    client's handler and training intervals (wall clock) for the timing split."""
    record: ClientRecord
    update: Update | None
    busy: tuple[float, float] | None = None
    training: tuple[float, float] | None = None


def _metric(metrics: object, key: str, default: float | None = None) -> float:
    """One numeric metric of a reply, read defensively: the client controls its reply."""
    value = metrics.get(key, default)  # type: ignore[attr-defined]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise MalformedMetrics(f"{key}: {value!r}")
    return float(value)


def _read_training(metrics: object, received: Received) -> None:
    """Training loss and the handler's and training's intervals from a reply's metrics."""
    rec = received.record
    rec.loss = None if metrics.get("train-loss") is None else _metric(metrics, "train-loss")  # type: ignore[attr-defined]
    if "train-started" in metrics:  # type: ignore[operator]
        received.training = (_metric(metrics, "train-started"), _metric(metrics, "train-ended"))
        received.busy = (_metric(metrics, "started"), _metric(metrics, "ended"))
        rec.train_seconds = received.training[1] - received.training[0]
        rec.client_seconds = received.busy[1] - received.busy[0]


def _refusal(info: Any, charset_version: str) -> str | None:
    """Why a reply carries no usable update by the client's own word: a refusal or another vocabulary."""
    if "refused" in info:
        return str(info["refused"])
    if info.get("charset-version") != charset_version:
        return f"charset mismatch: server {charset_version}, client {info.get('charset-version')}"
    return None


def _client_records(content: RecordDict, client: str) -> tuple[StepRecord, ...]:
    if "steps" not in content.config_records:
        return ()
    return _step_records(str(content["steps"].get("records", "[]")), client)


def _step_records(text: str, client: str) -> tuple[StepRecord, ...]:
    text = text[:MAX_STEP_RECORDS]
    try:
        items = json.loads(text)
        return tuple(StepRecord(str(i["step"]), client, dict(i["info"])) for i in items)
    except (ValueError, TypeError, KeyError):
        return (StepRecord("protocol", client, {"note": "unreadable step records"}),)


def stale(info: Any, task: tuple[int, str]) -> str | None:
    """Why a reply does not answer this round's task (round, model digest), or None when it does:
    a delayed or replayed reply must not be averaged into a model it was not trained from."""
    answered = (info.get("answers-round"), info.get("answers-model"))
    if answered == task:
        return None
    if answered == (None, None):
        return "stale reply: it does not name the round and model it answers"
    return (f"stale reply: answers round {answered[0]} (model {str(answered[1])[:8]}), this is round {task[0]} "
            f"(model {task[1][:8]})")


def read_reply(reply: Message, node_name: str, charset_version: str, bytes_down: int,
               task: tuple[int, str] | None = None, registry: Registry = Registry()) -> Received:
    """Turn one reply into an update to screen, or a recorded rejection (never an exception).
    `task`: the (round, model digest) the reply must answer; `registry`: the operator's key
    registrations (a node is recorded under its registered name, and refused if it claims another's)."""
    node_id = str(reply.metadata.src_node_id)
    if reply.has_error():
        reason = (reply.error.reason or f"error code {reply.error.code}").strip().splitlines()
        return Received(ClientRecord(node_name, node_id, False, f"client failed: {reason[-1][:300] if reason else ''}",
                                     bytes_down=bytes_down), None)
    content = reply.content
    info = content["info"] if "info" in content.config_records else ConfigRecord()
    name, impostor = registry.identify(str(info.get("client", node_name)), node_id)
    metrics = content["metrics"] if "metrics" in content.metric_records else {}
    rec = ClientRecord(name, node_id, False, None, bytes_down=bytes_down, bytes_up=wire_bytes(content))
    received = Received(rec, None)
    try:
        examples = _metric(metrics, "num-examples", 0)
        if not examples.is_integer():
            raise MalformedMetrics(f"num-examples: {examples!r}")
        rec.examples = int(examples)
        _read_training(metrics, received)
    except MalformedMetrics as exc:
        rec.reason = f"malformed metrics ({str(exc)[:100]})"
        received.busy = received.training = None
        return received
    rec.reason = impostor or _refusal(info, charset_version) or (None if "delta" in content.array_records
                                                                 else "reply carries no update")
    if rec.reason is None and task is not None:
        rec.reason = stale(info, task)
    if rec.reason is None:
        try:
            tensors = from_record(content["delta"])
        except Exception as exc:  # a malformed array must not end the round
            rec.reason = f"unreadable update ({type(exc).__name__})"
            return received
        steps = metrics.get("train-steps") if isinstance(metrics.get("train-steps"), (int, float)) else None
        picked = metrics.get("cluster")   # a clustered run: the model this update trained (checked by the server)
        received.update = Update(name, tensors, rec.examples,
                                 {"train-loss": rec.loss or 0.0, **({"train-steps": float(steps)} if steps else {}),
                                  **({"cluster": float(picked)} if isinstance(picked, (int, float)) else {})},
                                 records=_client_records(content, name))
    return received
