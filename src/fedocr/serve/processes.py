"""`fedocr serve --processes N`: N server processes on one listening socket, under uvicorn's own
supervisor (it restarts a process that dies or stops answering, and stops them all on SIGINT or
SIGTERM). Each process has its own engine; model swaps reach all of them through
`fedocr.serve.shared_model`. The service keeps no other state, so this is the same as N copies
behind a load balancer, on one machine and one port.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from fedocr.serve.app import ServeConfig, create_app
from fedocr.serve.connections import HeaderDeadline
from fedocr.serve.memory import tune_malloc

STARTUP_S = 120          # how long a starting worker may take to answer the supervisor
PR_SET_PDEATHSIG = 1     # linux/prctl.h


@dataclass
class WorkerApp:
    """The ASGI app as it travels to a worker process: only the config is pickled (a process is
    started by spawn, not fork), and each process builds its own app, and so its own engine, on
    the first event it gets (uvicorn's lifespan startup)."""
    config: ServeConfig
    supervisor_pid: int
    _app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            _die_with(self.supervisor_pid)
            tune_malloc()
            # uvicorn names the protocol class by reference in the pickled config, so the header
            # deadline of this server is set on the class, in this process
            HeaderDeadline.header_timeout_s = self.config.read_timeout_s
            self._app = create_app(self.config)
        await self._app(scope, receive, send)

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "supervisor_pid": self.supervisor_pid, "_app": None}


def serve_processes(config: ServeConfig, sock: socket.socket, processes: int, **uvicorn_options: Any) -> None:
    """Run `processes` server processes on `sock` until SIGINT or SIGTERM."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    folder = Path(tempfile.mkdtemp(prefix="fedocr-serve-"))   # 0700: the swaps of this server alone
    try:
        worker = WorkerApp(replace(config, shared_model=folder / "model.json"), os.getpid())
        # A starting process imports the app and loads its model before it answers the supervisor's
        # health check: uvicorn's default 5 s kills it mid-start on a busy machine, again and again.
        server_config = uvicorn.Config(worker, http=HeaderDeadline, workers=processes,
                                       timeout_worker_healthcheck=STARTUP_S, **uvicorn_options)
        supervisor = Multiprocess(server_config, target=uvicorn.Server(server_config).run, sockets=[sock])
        try:
            supervisor.run()
        except BaseException:
            supervisor.terminate_all()
            supervisor.join_all()
            raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _die_with(supervisor_pid: int) -> None:
    """Ask Linux to send this worker SIGTERM when the supervisor dies (even by SIGKILL), so no
    orphan keeps the port; no effect elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor_pid:   # it died before the request: nobody will send the signal
        os.kill(os.getpid(), signal.SIGTERM)
