"""`fedocr serve --processes N`: several processes on one port, each with its own engine, and a
model swap made in one of them reaching every other (and a process started after it)."""
from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
import pytest

from fedocr.export import export_onnx
from fedocr.serve.hotswap import ModelSlot
from fedocr.serve.shared_model import SharedModel
from serve_fixtures import fixed_lines_small, live_server, random_model


def test_a_swap_in_one_process_reaches_the_others_and_a_process_started_later(tmp_path):
    first, second = random_model(tmp_path / "a.pt", seed=1), random_model(tmp_path / "b.pt", seed=2)
    shared = SharedModel(tmp_path / "model.json")
    here, there = ModelSlot(first, shared=shared), ModelSlot(first, shared=shared)
    assert there.follow() is None                               # nothing announced yet

    changed, _ = here.switch(second)                            # "make this round live" in one process
    assert changed and shared.read().generation == 1
    assert here.follow() is None                                # its own swap is not applied twice
    changed, loaded = there.follow()
    assert changed and loaded.engine.info.version == here.engine.info.version
    assert there.follow() is None
    assert ModelSlot(first, shared=shared).engine.info.version == here.engine.info.version   # a replaced worker

    here.reload(announce=False)                                 # the file watcher: every process watches itself
    assert shared.read().generation == 1


def test_announcements_from_two_processes_get_distinct_generations(tmp_path):
    one, two = SharedModel(tmp_path / "model.json"), SharedModel(tmp_path / "model.json")
    assert one.read() is None
    assert [one.announce(tmp_path / "a.onnx", False), two.announce(tmp_path / "b.onnx", True)] == [1, 2]
    newest = one.read()
    assert (newest.generation, newest.model.name, newest.force) == (2, "b.onnx", True)


def _pids_and_models(base: str, want: int, timeout: float = 30.0) -> dict[int, str]:
    """Ask /api/health on new connections until `want` processes have answered."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        health = httpx.get(base + "/api/health", timeout=5).json()
        seen[health["pid"]] = health["model"]
    assert len(seen) == want, f"only processes {sorted(seen)} answered"
    return seen


def _wait_until_all_serve(base: str, version: str, processes: int, timeout: float = 30.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = _pids_and_models(base, processes)
        if set(seen.values()) == {version} or time.monotonic() > deadline:
            return seen
        time.sleep(0.3)


@pytest.mark.slow
def test_two_processes_share_the_port_follow_a_reload_and_a_crashed_one_comes_back(tmp_path):
    model = tmp_path / "global.onnx"
    lines = fixed_lines_small(4)
    export_onnx(random_model(tmp_path / "r1.pt", seed=1), model, lines=lines)
    workers: set[int] = set()
    try:
        with live_server(model, "--processes", "2", "--cache", "0") as base:
            before = _pids_and_models(base, 2)
            workers |= set(before)
            assert len(set(before.values())) == 1

            export_onnx(random_model(tmp_path / "r2.pt", seed=2), model, lines=lines)   # atomic replace
            reloaded = httpx.post(base + "/api/model/reload", timeout=60).json()["model"]["version"]
            assert reloaded not in before.values()
            after = _wait_until_all_serve(base, reloaded, 2)
            assert set(after.values()) == {reloaded}, f"a process still serves the old model: {after}"

            crashed = next(iter(after))
            os.kill(crashed, signal.SIGKILL)                    # the supervisor starts a new process ...
            deadline = time.monotonic() + 60
            while crashed in (seen := _pids_and_models(base, 2, timeout=60)) and time.monotonic() < deadline:
                time.sleep(0.5)
            workers |= set(seen)
            assert crashed not in seen and set(seen.values()) == {reloaded}   # ... on the model now served

            os.kill(psutil.Process(next(iter(seen))).ppid(), signal.SIGKILL)   # the supervisor itself dies
            for pid in seen:
                assert not _alive_after(pid, 15), f"server process {pid} outlived its supervisor"
    finally:
        for pid in workers:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


def _alive_after(pid: int, seconds: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout=seconds)
    except psutil.NoSuchProcess:
        return False
    except psutil.TimeoutExpired:
        return True
    return False
