"""The ServerApp: a thin handler that builds the typed run config and runs the round loop."""
from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedocr.federated.config import FlConfig
from fedocr.federated.rounds import FederatedServer


def build_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's plus `overrides` (hyphenated keys)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = FlConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
        FederatedServer(cfg, flower_run_id=context.run_id, printer=lambda line: print(line, flush=True)).run(grid)

    return server_app


app = build_server_app()
