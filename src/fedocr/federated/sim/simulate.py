"""`fedocr fl simulate`: the Flower App on Flower's simulation engine, the supported way.

It does what `flwr run` does on a laptop, minus what goes wrong there (issue 11): it starts a
SuperLink of its own in simulation mode on free 127.0.0.1 ports (with the `flower-*` commands of
this environment, and runtime dependency installation off, so no per-run `uv sync` can pull a
CUDA torch), writes a one-file Flower App whose run config is this run's, calls `flwr run` with
one virtual SuperNode per organisation, streams the ServerApp's output through a filter that
drops library banners and colour codes, and stops every process it started, by PID, when the
run ends or fails. The ServerApp itself trains the baselines and exports model.onnx after the
last round, so `flwr run .` and this command write the same artefacts.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedocr.federated.config import FlConfig
from fedocr.data.organisations import get_federation

# At most two concurrent Ray actors on this machine kind (each ~550 MB, one core each).
MAX_ACTORS = 2
BIN = Path(sys.executable).parent
CONNECTION = "fedocr-sim"
RAY_PREFIX = "fedocr-ray-"   # + this process's id: /tmp/fedocr-ray-PID-XXXX
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Lines of Flower's and Ray's own chatter that mean nothing to someone running a federation.
NOISE = ("Flower App configuration warnings", "- Recommended property", "Using SuperLink", "Successfully started run",
         "Starting logstream", "Starting Flower Simulation", "Since flwr 1.32", "Federation `@", "To change federation",
         "flwr federation simulation-config", "Successfully installed", "Manually terminating ClientAppActor",
         "warnings.warn(", "FutureWarning", "shape_type_inference", "Logstream")


class SimulationFailed(RuntimeError):
    """The federated run ended with an error (the run store and report.json say which)."""


def flower_env(flwr_home: Path, ray_tmp: Path | None = None) -> dict[str, str]:
    """The environment every Flower run needs here (notes/flower-1.42.md)."""
    env = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(flwr_home),
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",         # Ray's FutureWarning about GPU variables
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}   # flower-superlink, flwr-serverapp, ...
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_app(folder: Path, cfg: FlConfig) -> Path:
    """A Flower App of one pyproject.toml: fedocr's ServerApp and ClientApp, this run's config."""
    folder.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in cfg.to_run_config().items())
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "fedocr-run"\nversion = "1.0.0"\ndescription = "A fedocr federated run"\n'
        'license = "Apache-2.0"\n\n[tool.flwr.app]\npublisher = "fedocr"\n\n[tool.flwr.app.components]\n'
        'serverapp = "fedocr.federated.server_app:app"\nclientapp = "fedocr.federated.client_app:app"\n\n'
        f"[tool.flwr.app.config]\n{config}\n", encoding="utf-8")
    return folder


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a service manager) ends Python without running `finally`
    blocks, which would leave the SuperLink and its Ray processes running: while this lasts, it
    raises SystemExit in the main thread instead, so the clean-up runs. A handler someone else
    installed is left alone, as is a thread that cannot take signals."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second SIGTERM must not cut the clean-up short
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def local_superlink(home: Path, env: dict[str, str]) -> Iterator[int]:
    """A SuperLink in simulation mode on a free port, its connection in `home`/config.toml; on
    exit it and every process it started are stopped."""
    import httpx
    import psutil

    port = _free_port()
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n', encoding="utf-8")
    log = (home / "superlink.log").open("wb")
    proc = subprocess.Popen([str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                             "--host", "127.0.0.1", "--port", str(port), "--database", str(home / "superlink.db"),
                             "--disable-runtime-dependency-installation"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)
    children: dict[int, Any] = {}

    def collect() -> None:  # the SuperLink starts its runtimes detached: remember them while it lives
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                children.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise SimulationFailed(f"flower-superlink exited with code {proc.returncode}; see {home / 'superlink.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SimulationFailed(f"flower-superlink did not start within 60 s; see {home / 'superlink.log'}")
            time.sleep(0.3)
        yield port
        collect()
    finally:
        collect()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for child in children.values():
            try:
                child.terminate()
            except psutil.NoSuchProcess:
                pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        _, alive = psutil.wait_procs(list(children.values()), timeout=15)
        for child in alive:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()


def readable(line: str) -> str | None:
    """A line of `flwr run --stream` output as the user should see it, or None for chatter."""
    text = ANSI.sub("", line).rstrip()
    if not text.strip() or any(n in text for n in NOISE) or text.strip() in ("INFO :", "WARNING :"):
        return None
    if text.startswith("(ClientAppActor pid="):  # Ray's prefix on a client's output
        text = text.split(")", 1)[1].strip()
    return text


def federation_config(nodes: int, actors: int = MAX_ACTORS) -> str:
    """`flwr run --federation-config`: one virtual SuperNode per node, one CPU per client actor.
    On this machine Ray starts with `actors` CPUs, so that many clients train at once. With
    RAY_ADDRESS set (e.g. `RAY_ADDRESS=head:6379`), Ray joins that cluster instead, and the
    cluster's CPUs decide how many actors run: Ray refuses a CPU count when it joins one."""
    config = f"num-supernodes={nodes} client-resources-num-cpus=1 client-resources-num-gpus=0 "
    if not os.environ.get("RAY_ADDRESS"):
        config += f"init-args-num-cpus={max(1, min(actors, os.cpu_count() or 1))} init-args-num-gpus=0 "
    return config + "init-args-logging-level='warning'"


def he_keys(cfg: FlConfig, printer: Callable[[str], None]) -> None:
    """HE in simulation: the operator's part, a CKKS key for the run's nodes, made once (a
    deployment makes it with `fedocr fl he-keys` and hands it out)."""
    from fedocr.federated.pipeline.he import PUBLIC, HeConfig, make_keys

    config = HeConfig.from_run_config(cfg.to_run_config())
    if config.method == "ckks" and not (config.folder / PUBLIC).is_file():
        make_keys(config.folder, config.poly_degree)
        printer(f"made a CKKS key for the simulated nodes in {config.folder}")


def simulate(cfg: FlConfig, baselines: bool = True, printer: Callable[[str], None] = print,
             actors: int = MAX_ACTORS) -> dict[str, Any]:
    """Run the federation of `cfg.federation` for `cfg.num_rounds` rounds (resuming a run found in
    the out-dir); returns the report the ServerApp wrote to out-dir/report.json.

    A run that stalls (too few nodes) returns its report with status "stalled"; one that fails
    raises SimulationFailed. The process environment is left as it was found."""
    cfg = cfg.with_(baselines=cfg.baselines and baselines)
    fed = get_federation(cfg.federation)
    out = cfg.out_path()
    out.mkdir(parents=True, exist_ok=True)
    home = out / ".flwr"
    # Ray's socket paths must stay under 107 characters: a short folder of its own, removed afterwards.
    ray_tmp = Path(tempfile.mkdtemp(prefix=f"{RAY_PREFIX}{os.getpid()}-", dir="/tmp"))
    env = flower_env(home, ray_tmp)
    report_path = out / "report.json"
    started = time.time()
    he_keys(cfg, printer)
    federation = federation_config(len(fed.nodes), actors)
    try:
        app = write_app(home / "app", cfg)
        with sigterm_as_exit(), local_superlink(home, env):
            proc = subprocess.Popen([str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream",
                                     "--federation-config", federation], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}, cwd=home)
            assert proc.stdout is not None
            tail: list[str] = []
            try:
                for line in proc.stdout:
                    tail = (tail + [ANSI.sub("", line.rstrip())])[-20:]
                    shown = readable(line)
                    if shown is not None:
                        printer(shown)
                code = proc.wait()
            finally:
                if proc.poll() is None:   # interrupted: the client of the SuperLink goes with it
                    proc.terminate()
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    fresh = report_path.is_file() and report_path.stat().st_mtime >= started - 1
    if not fresh:
        detail = " | ".join(t for t in tail if t.strip())[-600:]
        raise SimulationFailed(f"the federated run wrote no {report_path} (flwr run exited {code}: {detail})")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if report.get("status") == "failed":
        raise SimulationFailed(f"the federated run failed: {report.get('error') or 'see the log above'}")
    if cfg.audit.wanted and report.get("status") == "finished":  # the privacy audit of the published model
        from fedocr.federated.sim.audit import audit_run

        report["audit"] = audit_run(out, printer=printer)
    return report
