"""A stand-in for Flower's Grid that hands each message to the real ClientApp handlers in this
process: the ServerApp's round loop and the client's handler run unchanged, without Ray or a
SuperLink, so behaviour tests of the federation (it learns, it rolls back) stay fast."""
from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module

from fedocr.federated.client_app import handle_decrypt, handle_evaluate, handle_query, handle_train, secure_mod
from fedocr.federated.config import FlConfig
from fedocr.federated.rounds import FederatedServer

# A tiny mini-vocabulary CRNN after 9 FedAvg rounds from scratch (bench/fl_compress.py, dense, seed 0):
# past CTC's all-blank plateau, which a model from scratch needs ~70 local steps to leave.
WARM = Path(__file__).parent / "data" / "tiny-mini-warm.pt"


class InProcessGrid:
    """One virtual node per organisation (partition-id 0..n-1), node ids 101, 102, ..."""

    def __init__(self, run_config: dict[str, Any], nodes: int, node_configs: list[dict[str, Any]] | None = None,
                 registered: dict[int, str] | None = None) -> None:
        configs = node_configs or [{"partition-id": i} for i in range(nodes)]
        self.contexts = {101 + i: Context(run_id=1, node_id=101 + i, node_config=config, state=RecordDict(),
                                          run_config=run_config) for i, config in enumerate(configs)}
        self.registered = registered or {}   # the names keys were registered under (`flwr supernode register --name`)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def get_nodes(self) -> list[NodeInfo]:
        return [NodeInfo(node_id=node, name=self.registered.get(node)) for node in self.contexts]

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        """Each message through the ClientApp's mod (SecAgg+ rounds) and handler, in turn; each node
        gets its own copy of the content, as over a wire (Flower's SecAgg+ mod edits what it gets)."""
        return [self._deliver(m) for m in messages]

    def _deliver(self, message: Message) -> Message:
        """A handler's exception becomes an error reply, as Flower's engines send it."""
        handler = {"train": handle_train, "query": handle_query, "evaluate": handle_evaluate,
                   "query.decrypt": handle_decrypt}[message.metadata.message_type]
        try:
            return secure_mod(copy.deepcopy(message), self.contexts[message.metadata.dst_node_id], handler)
        except Exception as exc:  # noqa: BLE001 - any client failure is the server's to survive
            return Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)


def task_identity(monkeypatch: Any) -> None:
    """Flower 1.42 stamps each new Message with the run id of the process's task; a test process has none."""
    from flwr.supercore.task_identity import TaskIdentity

    for field in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, field, 1)


def run_in_process(tmp_path: Path, monkeypatch: Any, rounds: int, printer: Any = lambda _: None,
                   node_configs: list[dict[str, Any]] | None = None, registered: dict[int, str] | None = None,
                   **settings: object) -> tuple[dict, FlConfig]:
    """A three-orgs-mini federation from the WARM model, 48 lines per node, every node every round."""
    task_identity(monkeypatch)
    torch.set_num_threads(2)
    cfg = FlConfig.from_run_config({"federation": "three-orgs-mini", "charset": "mini", "initial-model": str(WARM),
                                    "num-rounds": rounds, "lines-per-client": 48, "val-lines": 32, "fraction-train": 1.0,
                                    "out-dir": str(tmp_path / "out"), "store": str(tmp_path / "runs.db"), "baselines": False,
                                    **settings})
    server = FederatedServer(cfg, printer=printer)
    grid = InProcessGrid(cfg.to_run_config(), len(node_configs or [0, 1, 2]), node_configs, registered)
    report = server.run(grid)  # type: ignore[arg-type]
    return report, cfg
