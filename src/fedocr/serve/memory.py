"""Keeping a long-running server's resident memory flat, through glibc's allocator (no effect,
and False, on other C libraries).

Three things make RSS creep without a leak: every worker thread gets its own malloc arena; glibc
raises its mmap threshold after the first large free (up to 32 MiB), so decoded pages and their
arrays then come from the heap and leave holes in it; and freed heap blocks stay mapped until the
heap's top is free. `tune_malloc` caps the arenas (measured by bench/serve.py: +55 MB over 2,000
requests without the cap, flat with it) and pins the threshold at 1 MiB, so a large buffer is
mapped on its own and unmapped when freed; `MemoryTrimmer` hands free heap pages back to the
system at most once a second, after a recognition, and once more after the last one of a burst.
ONNX Runtime's own arena keeps the largest runs' buffers for ever; the trimmer also calls a
`release` the engine gives it (a tiny run that shrinks the arena, see `engine.onnx_logits_fn`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from typing import Any

M_ARENA_MAX = -8         # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2**20   # bytes: larger blocks get their own mapping, returned to the system when freed


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas and pin its mmap threshold (like MALLOC_ARENA_MAX and
    MALLOC_MMAP_THRESHOLD_); call before the server starts its threads."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arenas) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


class MemoryTrimmer:
    """`after_work()` returns freed memory to the system at most every `every_s`: a trim walks
    every arena, so doing it after each of hundreds of requests a second would cost. A call that
    comes too soon schedules one trim for when the interval is over, so the memory of a burst's
    last request is handed back too, not kept until the next request."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s, self._libc = every_s, _libc()
        self._last, self._lock = 0.0, threading.Lock()
        self._release: Callable[[], None] | None = None
        self._pending: threading.Timer | None = None
        self._schedule_lock = threading.Lock()
        self.trims = 0

    def after_work(self, release: Callable[[], None] | None = None) -> bool:
        """Trim if it is time, else make sure a trim follows; `release` hands back memory the
        C library's trim cannot reach (the model's). Returns whether this call trimmed."""
        if release is not None:
            self._release = release
        if self._libc is None and self._release is None:
            return False
        wait = self._last + self.every_s - time.monotonic()
        if wait > 0:
            self._schedule(wait)
            return False
        return self._trim()

    def _schedule(self, wait: float) -> None:
        with self._schedule_lock:
            if self._pending is None or not self._pending.is_alive():
                self._pending = threading.Timer(wait, self._trim)
                self._pending.daemon = True
                self._pending.start()

    def _trim(self) -> bool:
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._last = time.monotonic()
            if self._release is not None:
                self._release()
            if self._libc is not None:
                self._libc.malloc_trim(0)
            self.trims += 1
            return True
        finally:
            self._lock.release()
