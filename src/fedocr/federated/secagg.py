"""One secure round: Flower's `SecAggPlusWorkflow` run over the round's sampled nodes.

The workflow is Flower's legacy-API SecAgg+ (setup, share keys, collect masked vectors, unmask:
four message exchanges per round); it asks a legacy `Strategy` whom to send what and hands it the
unmasked weighted mean. `_OneRound` is that strategy for exactly one round of our loop: it answers
with the nodes and task the round loop chose, and keeps what the workflow aggregates. The grid is
wrapped to count every byte of the four exchanges per node, so a secure round's `bytes_up` and
`bytes_down` are its whole cost, not only the masked vector.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedocr.federated.pipeline.secure import SecureConfig
from fedocr.federated.protocol import wire_bytes


@dataclass
class SecureRound:
    """What one secure round gave the server: each summed node's FitRes (its clear metrics; the
    parameters of every one are the unmasked weighted mean), failures, and bytes per node."""
    results: list[tuple[int, FitRes]] = field(default_factory=list)
    failures: int = 0
    bytes_up: Counter[int] = field(default_factory=Counter)
    bytes_down: Counter[int] = field(default_factory=Counter)

    @property
    def completed(self) -> bool:
        """False when the workflow halted (fewer live nodes than the reconstruction threshold)."""
        return bool(self.results)


class _MeteredGrid:
    """The round's grid, counting the serialized bytes of each message to and from each node."""

    def __init__(self, grid: Grid, sink: SecureRound) -> None:
        self.grid, self.sink = grid, sink

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        for m in messages:
            self.sink.bytes_down[m.metadata.dst_node_id] += wire_bytes(m.content)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for r in replies:
            if not r.has_error():
                self.sink.bytes_up[r.metadata.src_node_id] += wire_bytes(r.content)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


class _OneRound(Strategy):
    """The legacy strategy SecAgg+ asks: one task for the chosen nodes, and the aggregate kept."""

    def __init__(self, nodes: list[int], task: FitIns, grid: Grid, sink: SecureRound) -> None:
        self.nodes, self.task, self.grid, self.sink = nodes, task, grid, sink

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return [(GridClientProxy(node, self.grid, 0), self.task) for node in self.nodes]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.sink.results = [(int(proxy.node_id), res) for proxy, res in results]  # type: ignore[attr-defined]
        self.sink.failures = len(failures)
        return None, {}   # the round loop applies the mean through its own chain

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


def secure_round(grid: Grid, nodes: list[int], task: FitIns, server_round: int, config: SecureConfig,
                 timeout: float) -> SecureRound:
    """Run SecAgg+ over `nodes` with `task`; the result says who was summed and what it cost."""
    sink = SecureRound()
    metered = _MeteredGrid(grid, sink)
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
                        MAIN_PARAMS_RECORD: ArrayRecord()})
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
                            strategy=_OneRound(nodes, task, metered, sink))  # type: ignore[arg-type]
    workflow = SecAggPlusWorkflow(config.flower_shares(), config.flower_threshold(), max_weight=config.max_weight,
                                  clipping_range=config.clip_range, timeout=timeout)
    workflow(metered, context)  # type: ignore[arg-type]
    return sink
