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
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fedocr.serve")

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
    comes too soon (or while a trim runs) schedules one trim for when the interval is over, so the
    memory of a burst's last request is handed back too, not kept until the next request.

    `release` hands back memory the C library's trim cannot reach (the current model's); it is
    asked at each trim, so a trim never keeps a replaced model alive. A failing `release` is
    logged and skipped: memory hygiene must never fail a request."""

    def __init__(self, every_s: float = 1.0, release: Callable[[], None] | None = None) -> None:
        self.every_s, self._libc, self._release = every_s, _libc(), release
        self._last, self._lock = 0.0, threading.Lock()
        self._pending: threading.Timer | None = None
        self._schedule_lock = threading.Lock()
        self._closed = False
        self.trims = 0

    def after_work(self) -> bool:
        """Trim if it is time, else make sure a trim follows. Returns whether this call trimmed."""
        if self._closed or (self._libc is None and self._release is None):
            return False
        wait = self._last + self.every_s - time.monotonic()
        if wait > 0:
            self._schedule(wait)
            return False
        if not self._trim():   # another trim is running: make sure one follows it
            self._schedule(self.every_s)
            return False
        return True

    def close(self) -> None:
        """No more trims (a server shutting down): cancel the scheduled one, wait for a running one."""
        with self._schedule_lock:
            self._closed = True
            if self._pending is not None:
                self._pending.cancel()
        with self._lock:
            pass

    def _schedule(self, wait: float) -> None:
        with self._schedule_lock:
            if not self._closed and self._pending is None:
                self._pending = threading.Timer(wait, self._deferred)
                self._pending.daemon = True
                self._pending.start()

    def _deferred(self) -> None:
        with self._schedule_lock:
            self._pending = None   # from here on, work that finishes schedules the next trim
            if self._closed:
                return
        if not self._trim():
            self._schedule(self.every_s)

    def _trim(self) -> bool:
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._last = time.monotonic()
            if self._release is not None:
                try:
                    self._release()
                except Exception as exc:   # e.g. ONNX Runtime refusing the run
                    log.warning("releasing the model's memory failed: %s", exc)
            if self._libc is not None:
                self._libc.malloc_trim(0)
            self.trims += 1
            return True
        finally:
            self._lock.release()
