"""The server tunes glibc's allocator and hands freed memory back to the system, but not after
every request (a fake C library records the calls, so this process's allocator is left alone)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fedocr.serve import memory
from fedocr.serve.engine import load_engine
from fedocr.serve.memory import M_ARENA_MAX, M_MMAP_THRESHOLD, MMAP_THRESHOLD, MemoryTrimmer, tune_malloc


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append(("mallopt", option, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_trims_after_work_at_most_once_per_interval_and_once_after_a_burst(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    released: list[float] = []
    trimmer = MemoryTrimmer(every_s=0.2, release=lambda: released.append(time.monotonic()))
    assert trimmer.after_work() is True
    assert [trimmer.after_work() for _ in range(50)] == [False] * 50    # a burst of requests: one trim now ...
    assert libc.calls == [("malloc_trim", 0)]
    time.sleep(0.4)
    assert libc.calls == [("malloc_trim", 0)] * 2     # ... and one when the interval is over, for its last request
    assert len(released) == 2 and released[1] - released[0] >= 0.19   # the model's memory each time too
    time.sleep(0.3)
    assert trimmer.trims == 2                          # idle: nothing more


def test_a_failing_release_is_logged_not_raised_and_a_closed_trimmer_stops(monkeypatch, caplog):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)

    def broken() -> None:
        raise RuntimeError("no run")

    trimmer = MemoryTrimmer(every_s=0.2, release=broken)
    assert trimmer.after_work() is True                # the request that ended here is not failed by it
    assert "no run" in caplog.text and libc.calls == [("malloc_trim", 0)]
    assert trimmer.after_work() is False               # too soon: a trim is scheduled ...
    trimmer.close()                                    # ... and cancelled by a server shutting down
    time.sleep(0.35)
    assert trimmer.trims == 1 and trimmer.after_work() is False


@pytest.mark.parametrize("threads", [1, 2])
def test_the_engine_hands_onnx_runtimes_arena_back_after_a_large_batch(threads):
    psutil = pytest.importorskip("psutil")
    engine = load_engine(Path(__file__).parents[1] / "models" / "base.onnx", threads=threads)
    process = psutil.Process()
    rng = np.random.default_rng(0)
    engine.recognize([rng.integers(0, 255, (32, 700), dtype=np.uint8) for _ in range(32)])
    held = process.memory_info().rss
    trimmer = MemoryTrimmer(release=engine.release_memory)   # the server's path: release, then malloc_trim
    assert trimmer.after_work() is True
    trimmer.close()
    # The batch's buffers, not kept for the next one (malloc_trim alone cannot reach ONNX Runtime's
    # arena; and late in a long test process, freed arena chunks sit in glibc's heap until trimmed).
    assert held - process.memory_info().rss > 30 * 2**20


def test_malloc_is_capped_at_two_arenas_and_large_buffers_are_mapped_alone(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    assert tune_malloc() is True
    assert libc.calls == [("mallopt", M_ARENA_MAX, 2), ("mallopt", M_MMAP_THRESHOLD, MMAP_THRESHOLD)]


def test_without_glibc_nothing_is_tuned_or_trimmed(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert tune_malloc() is False and MemoryTrimmer().after_work() is False
