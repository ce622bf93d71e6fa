"""The served model, replaceable while requests are in flight.

Requests take a reference to the current engine and keep using it until they finish; a reload
builds the new engine completely (and runs it once) before swapping the reference, so no
request ever sees a half-loaded model and a bad file leaves the old model serving. The model
path can also be watched, so the newest accepted global model of a federation (written
atomically by the run) goes live by itself.
"""
from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedocr.serve.engine import Engine, load_engine, resolve_model_path


@dataclass(frozen=True)
class Loaded:
    engine: Engine
    loaded_at: str
    signature: tuple[int, int]          # (mtime_ns, size) of the file it came from


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


class ModelSlot:
    """Holds the current engine; `reload` swaps it atomically."""

    def __init__(self, path: str | Path, threads: int | None = None, prefer_onnx: bool = True) -> None:
        self.path, self.threads, self.prefer_onnx = Path(path), threads, prefer_onnx
        self._lock = threading.Lock()       # one reload at a time
        self._current = self._load()

    @property
    def current(self) -> Loaded:
        return self._current

    @property
    def engine(self) -> Engine:
        return self._current.engine

    def _load(self, path: Path | None = None) -> Loaded:
        path = path or self.path
        file = resolve_model_path(path, self.prefer_onnx)
        signature = _signature(file) if file.is_file() else (0, 0)
        engine = load_engine(path, self.threads, self.prefer_onnx)
        engine.recognize([np.full((32, 64), 255, np.uint8)])   # fail here, not on a user's request
        return Loaded(engine, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), signature)

    def changed(self) -> bool:
        """Whether the model file differs from the one loaded (or a sibling .onnx appeared)."""
        file = resolve_model_path(self.path, self.prefer_onnx)
        try:
            return str(file) != self._current.engine.info.path or _signature(file) != self._current.signature
        except OSError:
            return False                     # the file is being replaced; look again later

    def reload(self) -> tuple[bool, Loaded]:
        """Load the model file again; returns (whether the version changed, what is now served).

        Raises the load error (the old model keeps serving) when the file cannot be used.
        """
        return self.switch(self.path)

    def switch(self, path: str | Path) -> tuple[bool, Loaded]:
        """Serve another model file from now on (the dashboard's "make this round live"); reloads and
        the watcher then follow that file. Raises the load error, the old model still serving."""
        with self._lock:
            old = self._current
            new = self._load(Path(path))
            self.path, self._current = Path(path), new
            return new.engine.info.version != old.engine.info.version, new
