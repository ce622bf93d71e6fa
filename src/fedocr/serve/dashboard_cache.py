"""The run page's totals, kept per run in the serving process and extended round by round.

A 1,000-round, 100-client run has about 400,000 client rows and step records; totalling them on
every page load took seconds. Rounds before the latest never change once stored (a restarted
server only redoes the round it was in), so they are totalled once and kept; each request adds
the rounds stored since, and the latest round is always read fresh.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fedocr.federated.runs.reader import RunReader
from fedocr.federated.runs.totals import RunTotals


@dataclass
class _Entry:
    identity: tuple[Any, ...]            # the store file and the run's creation: a new file or run starts over
    through: int = 0                     # rounds 1..through are totalled
    totals: RunTotals = field(default_factory=RunTotals)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RunCache:
    """Totals of the runs pages were asked for (the `runs` most recently viewed)."""

    def __init__(self, runs: int = 16) -> None:
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.runs = runs

    def _entry(self, reader: RunReader, run_id: str, created: str, stable: int) -> _Entry:
        key = (str(reader.path.resolve()), run_id)
        identity = (reader.path.stat().st_ino, created)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.identity != identity or entry.through > stable:
                entry = self._entries[key] = _Entry(identity)
            self._entries.move_to_end(key)
            while len(self._entries) > self.runs:
                self._entries.popitem(last=False)
        return entry

    def snapshot(self, reader: RunReader, run_id: str, created: str) -> tuple[RunTotals, list[dict[str, Any]]]:
        """The run's totals and round summaries, up to its latest stored round."""
        last = reader.last_round(run_id)
        stable = max(0, last - 1)        # the latest round may still be rewritten
        entry = self._entry(reader, run_id, created, stable)
        with entry.lock:
            if entry.through < stable:
                entry.totals = _add(entry.totals, reader, run_id, entry.through, stable)
                entry.rounds = entry.rounds + reader.rounds(run_id, entry.through, stable)
                entry.through = stable
            totals, rounds = entry.totals, entry.rounds
        latest = _add(totals, reader, run_id, stable, last)
        return latest, rounds + reader.rounds(run_id, stable, last)


def _add(totals: RunTotals, reader: RunReader, run_id: str, after: int, upto: int) -> RunTotals:
    """`totals` with rounds (after, upto] added."""
    return totals.merged(reader.client_rows(run_id, after, upto), reader.step_rows(run_id, after, upto),
                         reader.step_counts(run_id, after, upto))
