"""A stand-in for Flower's Grid that hands each message to the real ClientApp handlers in this
process: the ServerApp's round loop and the client's handler run unchanged, without Ray or a
SuperLink, so behaviour tests of the federation (it learns, it rolls back) stay fast."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Message, RecordDict

from fedocr.federated.client_app import handle_evaluate, handle_query, handle_train


class InProcessGrid:
    """One virtual node per organisation (partition-id 0..n-1), node ids 101, 102, ..."""

    def __init__(self, run_config: dict[str, Any], nodes: int, node_configs: list[dict[str, Any]] | None = None) -> None:
        configs = node_configs or [{"partition-id": i} for i in range(nodes)]
        self.contexts = {101 + i: Context(run_id=1, node_id=101 + i, node_config=config, state=RecordDict(),
                                          run_config=run_config) for i, config in enumerate(configs)}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        handlers = {"train": handle_train, "query": handle_query, "evaluate": handle_evaluate}
        return [handlers[m.metadata.message_type](m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def task_identity(monkeypatch: Any) -> None:
    """Flower 1.42 stamps each new Message with the run id of the process's task; a test process has none."""
    from flwr.supercore.task_identity import TaskIdentity

    for field in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, field, 1)
