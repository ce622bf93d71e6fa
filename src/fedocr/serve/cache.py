"""A small thread-safe LRU cache of OCR results keyed by the image's content hash.

Keys combine the SHA-256 of the uploaded bytes with the model version (and decoding options),
so a hot-swapped model never answers from its predecessor's results. Values are the results
only; the images themselves are never kept.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


def content_key(data: bytes, *parts: object) -> str:
    """SHA-256 of the bytes, qualified by e.g. the model version."""
    return ":".join([hashlib.sha256(data).hexdigest(), *map(str, parts)])


class ResultCache(Generic[V]):
    """Least-recently-used mapping with a fixed number of entries (0 disables caching)."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: V) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
