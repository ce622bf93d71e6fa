"""Which model the processes of one server serve (`fedocr serve --processes N`).

Each process has its own engine, and a reload or "make this round live" request reaches only the
process that accepted its connection. That process announces the swap here, in a small JSON file
the server's supervisor made; the other processes follow it within a poll interval, and a process
that starts later (a crashed worker the supervisor replaced) starts on the announced model. The
file names a model path, never holds a model: every process still loads and checks the file
itself (signature, vocabulary, built-in line).
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Announcement:
    generation: int        # counts swaps since the server started; higher is newer
    model: Path
    force: bool            # the swap was forced (another vocabulary): the followers force it too


class SharedModel:
    """The announcement file; `announce` and `read` are safe across processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> Announcement | None:
        """The newest announcement, or None before the first swap."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return Announcement(int(data["generation"]), Path(data["model"]), bool(data["force"]))

    def announce(self, model: str | Path, force: bool) -> int:
        """Record that `model` is now served; returns the new generation."""
        self.path.parent.mkdir(mode=0o700, exist_ok=True)   # e.g. a temporary folder aged out by tmpfiles
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)          # two processes swapping at once get distinct generations
            last = self.read()
            generation = (last.generation if last else 0) + 1
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            # abspath, not resolve: a symlinked model (current.onnx -> round-7.onnx) stays the link
            tmp.write_text(json.dumps({"generation": generation, "model": os.path.abspath(model),
                                       "force": force}), encoding="utf-8")
            os.replace(tmp, self.path)                 # readers see the old or the new file, never half of one
            return generation
