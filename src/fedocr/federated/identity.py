"""Who a node is. In a deployment the operator registers each organisation's key under a name
(`flwr supernode register KEY.pub --name hospital`): that name, not the one a node gives itself
in its node config, is what the run store and report record. A node that calls itself by another
name is refused. Simulated nodes have no registration and keep their own names."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STEP = "identity"   # the round's record of the nodes refused for their name


@dataclass(frozen=True)
class Registry:
    """The operator's key registrations, read once per round: node id -> registered name. Empty
    in simulation, where nodes keep their own names."""
    names: Mapping[str, str] = field(default_factory=dict)
    taken: frozenset[str] = field(init=False)   # every registered name: a nameless key may not claim one

    def __post_init__(self) -> None:
        object.__setattr__(self, "taken", frozenset(self.names.values()))   # derived once, not per reply

    @classmethod
    def of(cls, grid: Any) -> "Registry":
        get_nodes = getattr(grid, "get_nodes", None)   # Flower's Grid has it; a test stand-in may not
        if get_nodes is None:
            return cls()
        return cls({str(node.node_id): str(node.name) for node in get_nodes() if getattr(node, "name", "")})

    def identify(self, claimed: str, node_id: str) -> tuple[str, str | None]:
        """The name to record a node under, and why it is refused (None when it is not). A node
        with no name of its own calls itself `node-<id>`, which never conflicts."""
        registered = self.names.get(node_id)
        if registered is not None and claimed not in (registered, f"node-{node_id}"):
            return registered, f"impersonation: its key is registered as {registered!r} but it calls itself {claimed!r}"
        if registered is None and claimed in self.taken:
            return f"node-{node_id}", f"impersonation: it calls itself {claimed!r}, another node's registered name"
        return registered or claimed, None
