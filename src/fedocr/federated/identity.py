"""Who a node is. In a deployment the operator registers each organisation's key under a name
(`flwr supernode register KEY.pub --name hospital`): that name, not the one a node gives itself
in its node config, is what the run store and report record. A node that calls itself by another
name is refused. Simulated nodes have no registration and keep their own names."""
from __future__ import annotations

from typing import Any

STEP = "identity"   # the round's record of the nodes refused for their name


def registered_names(grid: Any) -> dict[str, str]:
    """Node id -> the name its key was registered under, for the nodes that have one."""
    get_nodes = getattr(grid, "get_nodes", None)   # Flower's Grid has it; a test stand-in may not
    if get_nodes is None:
        return {}
    return {str(node.node_id): str(node.name) for node in get_nodes() if getattr(node, "name", "")}


def identify(claimed: str, node_id: str, registered: str | None,
             all_registered: frozenset[str] = frozenset()) -> tuple[str, str | None]:
    """The name to record a node under, and why it is refused (None when it is not). A node with
    no name of its own calls itself `node-<id>`, which never conflicts. `all_registered`: every
    name a key is registered under, which a node without a registered name may not use."""
    if registered is not None and claimed not in (registered, f"node-{node_id}"):
        return registered, f"impersonation: its key is registered as {registered!r} but it calls itself {claimed!r}"
    if registered is None and claimed in all_registered:
        return f"node-{node_id}", f"impersonation: it calls itself {claimed!r}, another node's registered name"
    return registered or claimed, None

