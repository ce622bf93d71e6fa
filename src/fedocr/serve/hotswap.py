"""The served model, replaceable while requests are in flight.

Requests take a reference to the current engine and keep using it until they finish; a reload
builds the new engine completely (and runs it once) before swapping the reference, so no
request ever sees a half-loaded model and a bad file leaves the old model serving. The model
path can also be watched, so the newest accepted global model of a federation (written
atomically by the run) goes live by itself.

A file that loads is not yet a model to serve. Before a swap the new model reads a built-in
line (a rendered line of digits, the same for both models), and the swap is refused when:
- its vocabulary (charset version) differs from the served one: every answer would change
  meaning, and a model of another vocabulary reads nothing (`force` switches on purpose);
- it reads the built-in line worse than the served model by more than SMOKE_SLACK of CER: a
  broken or mislabelled file (a relative test, so a model still in training replaces another).
The watcher never forces: it logs the refusal and keeps serving. With several server processes,
a swap one of them makes is announced (`fedocr.serve.shared_model`) and the others `follow` it.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from fedocr.data import SyntheticLines
from fedocr.serve.engine import Engine, load_engine, resolve_model_path
from fedocr.serve.shared_model import SharedModel
from fedocr.train.metrics import score


log = logging.getLogger("fedocr.serve")
SMOKE_SEED = 20_261_203   # the built-in line: line 0 of the `digits` preset with this seed
SMOKE_SLACK = 0.25        # CER a new model may lose on it against the served one


class SwapRefused(RuntimeError):
    """A model file that loads but must not replace the served one (the reason says why)."""


@dataclass(frozen=True)
class SmokeTest:
    """What a model read on the built-in line."""
    text: str
    read: str
    cer: float


def smoke_test(engine: Engine) -> SmokeTest:
    """Read the built-in line; raises if the model cannot (a graph that fails on real input)."""
    image, text = SyntheticLines("digits", 1, seed=SMOKE_SEED, charset=engine.charset)[0]
    read = engine.recognize([image])[0].text
    return SmokeTest(text, read, score([(read, engine.charset.normalise(text, keep_unknown=True))]).cer)


@dataclass(frozen=True)
class Loaded:
    engine: Engine
    loaded_at: str
    signature: tuple[int, int]          # (mtime_ns, size) of the file it came from
    smoke: SmokeTest


SwapResult = tuple[bool, Loaded]   # (whether the version changed, what is now served)


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


class ModelSlot:
    """Holds the current engine; `reload` swaps it atomically."""

    def __init__(self, path: str | Path, threads: int | None = None, prefer_onnx: bool = True,
                 trust: Path | None = None, shared: SharedModel | None = None) -> None:
        self.path, self.threads, self.prefer_onnx, self.trust = Path(path), threads, prefer_onnx, trust
        self.shared, self.generation = shared, 0     # the last announcement this process has applied
        self._lock = threading.Lock()       # one reload at a time
        announced = shared.read() if shared else None
        if announced:                       # a process started after a swap serves what the others serve
            self.generation = announced.generation
            try:
                self._current, self.path = self._load(announced.model), announced.model
                return
            except Exception as exc:        # else it would fail at every restart: serve the configured model
                log.warning("cannot load the announced model %s (%s); serving %s", announced.model,
                            first_line(exc), self.path)
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
        engine = load_engine(path, self.threads, self.prefer_onnx, trust=self.trust)   # every swap verifies too
        # smoke_test reads a real line: a model that cannot run fails here, not on a user's request
        return Loaded(engine, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), signature,
                      smoke_test(engine))

    def changed(self) -> bool:
        """Whether the model file differs from the one loaded (or a sibling .onnx appeared)."""
        file = resolve_model_path(self.path, self.prefer_onnx)
        try:
            return str(file) != self._current.engine.info.path or _signature(file) != self._current.signature
        except OSError:
            return False                     # the file is being replaced; look again later

    def reload(self, force: bool = False, announce: bool = True) -> SwapResult:
        """Load the model file again; returns (whether the version changed, what is now served).

        Raises the load error or SwapRefused (the old model keeps serving) when the file cannot be
        used; `force` accepts another vocabulary or a worse reading of the built-in line.
        `announce=False` (the file watcher, which runs in every process) keeps the swap to this process.
        """
        return self.switch(self.path, force, announce)

    def switch(self, path: str | Path, force: bool = False, announce: bool = True) -> SwapResult:
        """Serve another model file from now on (the dashboard's "make this round live"); reloads and
        the watcher then follow that file. Raises the load error or SwapRefused, the old model still
        serving."""
        with self._lock:
            return self._switch(Path(path), force, announce)

    def _switch(self, path: Path, force: bool, announce: bool) -> SwapResult:
        old = self._current
        new = self._load(path)
        if not force:
            refuse_swap(old, new)
        if announce and self.shared:        # announced first: a failed announcement swaps nothing
            self.generation = self.shared.announce(path, force)
        self.path, self._current = path, new
        return new.engine.info.version != old.engine.info.version, new

    def follow(self) -> SwapResult | None:
        """Apply a swap another process announced; None when there is none new. A swap this process
        cannot make (the file changed since, say) is not retried: it raises once (the caller logs
        it), and this process keeps its model until the next announcement."""
        if self.shared is None:
            return None
        with self._lock:                    # read under the lock: a swap of this process may be announcing
            announced = self.shared.read()
            if announced is None or announced.generation <= self.generation:
                return None
            self.generation = announced.generation
            return self._switch(announced.model, announced.force, announce=False)


def first_line(exc: BaseException) -> str:
    """The one line an operator sees for a model file that could not be swapped in."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def refuse_swap(old: Loaded, new: Loaded) -> None:
    """Raise SwapRefused when `new` must not replace `old` without `force` (see the module's doc)."""
    was, now = old.engine.info, new.engine.info
    if now.charset_version != was.charset_version:
        raise SwapRefused(f"{Path(now.path).name} uses vocabulary {now.charset_version} ({now.charset_size} classes), "
                          f"the served model {was.charset_version} ({was.charset_size}): every answer would change "
                          f"meaning; reload with force to switch vocabularies")
    if new.smoke.cer > old.smoke.cer + SMOKE_SLACK:
        raise SwapRefused(f"{Path(now.path).name} reads the built-in line {new.smoke.text!r} as {new.smoke.read!r} "
                          f"(CER {new.smoke.cer:.2f}), the served model with CER {old.smoke.cer:.2f}: a broken or "
                          f"mislabelled model; reload with force to serve it anyway")
