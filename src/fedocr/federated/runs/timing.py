"""Splitting a round's wall time into local training, other client work and framework overhead.

Each client reports when its handler started and ended and when its training loop ran (wall-clock
timestamps). The union of those intervals, clipped to the round's window, is the time during
which some client was training (or busy at all); whatever remains of the round's wall time is
framework overhead: message transport, serialization, scheduling and process start-up. Across
machines this relies on synchronised clocks (NTP is enough at this scale).
"""
from __future__ import annotations

from collections.abc import Iterable


def union_seconds(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of [a, b] intervals, clipped to [start, end]."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a  # type: ignore[operator]
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a  # type: ignore[operator]
    return total
