"""The server tunes glibc's allocator and hands freed memory back to the system, but not after
every request (a fake C library records the calls, so this process's allocator is left alone)."""
from __future__ import annotations

import time

from fedocr.serve import memory
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


def test_trims_after_work_at_most_once_per_interval(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    trimmer = MemoryTrimmer(every_s=0.2)
    assert trimmer.after_work() is True
    assert [trimmer.after_work() for _ in range(50)] == [False] * 50    # a burst of requests: one trim
    time.sleep(0.25)
    assert trimmer.after_work() is True
    assert libc.calls == [("malloc_trim", 0)] * 2


def test_malloc_is_capped_at_two_arenas_and_large_buffers_are_mapped_alone(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    assert tune_malloc() is True
    assert libc.calls == [("mallopt", M_ARENA_MAX, 2), ("mallopt", M_MMAP_THRESHOLD, MMAP_THRESHOLD)]


def test_without_glibc_nothing_is_tuned_or_trimmed(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert tune_malloc() is False and MemoryTrimmer().after_work() is False
