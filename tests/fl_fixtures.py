"""A real Flower deployment on 127.0.0.1 for tests: SuperLink with TLS and SuperNode
authentication, SuperNodes with their own data folders. Every process started here is recorded
by PID and stopped by `Deployment.stop()` (call it in a finally / fixture teardown)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} (process exit code {proc.poll()})")


@dataclass
class Deployment:
    root: Path
    certs: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)   # Flower 1.42 serves Fleet, Control and Runtime APIs on one port
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)
    children: dict[int, Any] = field(default_factory=dict)   # pid -> psutil.Process, found while running

    def __post_init__(self) -> None:
        # The SuperLink and SuperNodes start `flower-superexec` and `flwr-*` by name.
        self.env = {**self.env, "PATH": f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("wb")
        self.logs.append(log)
        # Own session: the SuperLink/SuperNode spawn ServerApp/ClientApp processes that the kill reaches too.
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_superlink(self) -> None:
        proc = self.start("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(self.certs / "ca.crt"),
                                  "--ssl-certfile", str(self.certs / "server.pem"),
                                  "--ssl-keyfile", str(self.certs / "server.key"),
                                  "--database", str(self.root / "superlink.db"),
                                  "--disable-runtime-dependency-installation", "--enable-supernode-auth",
                                  "--host", "127.0.0.1", "--port", str(self.port)])
        wait_port(self.port, proc)

    def write_connection(self) -> None:
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "fedocr"\n\n[superlink.fedocr]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n')

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        self.collect_children()
        try:
            return subprocess.run([str(BIN / "flwr"), *args], env=self.env, cwd=self.root, capture_output=True,
                                  text=True, timeout=timeout)
        finally:
            self.collect_children()

    def collect_children(self) -> None:
        """Remember every descendant (superexec, ServerApp, ClientApp processes) while its parent
        lives: once a leader exits, its detached children can no longer be found from it."""
        for proc in self.procs.values():
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    self.children.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                pass

    def alive(self) -> list[int]:
        """PIDs of the processes started here (and their children) that still run."""
        pids = [p.pid for p in self.procs.values() if p.poll() is None]
        for child in self.children.values():
            try:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return pids

    def start_supernode(self, name: str, key: Path | None, data: Path, tls: bool = True,
                        own_name: bool = True) -> subprocess.Popen:
        """`own_name`: the node names itself in its node config (else the registered name is its only one)."""
        config = f'data-path="{data}" threads=1' + (f' name="{name}"' if own_name else "")
        args = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
                "--node-config", config, "--max-retries", "3", "--max-wait-time", "20"]
        args += ["--root-certificates", str(self.certs / "ca.crt")] if tls else ["--insecure"]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        return self.start(f"supernode-{name}", args)

    def stop(self) -> None:
        # SuperLink and SuperNodes start `flower-superexec` detached (its own session): stop those
        # children by PID as well, found before their parents go (and earlier, while running).
        self.collect_children()
        for proc in self.procs.values():
            try:  # the whole group, even when its leader has exited: its children may not have
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        children = list(self.children.values())
        for child in children:
            try:
                child.terminate()
            except psutil.NoSuchProcess:
                pass
        deadline = time.time() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        _, remaining = psutil.wait_procs(children, timeout=max(0.1, deadline - time.time()))
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=10)
        for child in remaining:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(remaining, timeout=10)
        for log in self.logs:
            log.close()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""
