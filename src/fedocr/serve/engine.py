"""The inference engine behind `fedocr ocr` and the server: a model file in, page results out.

An engine pairs a backend (a `LogitsFn`: ONNX Runtime, or PyTorch as the fallback when no ONNX
file exists) with the model's charset, and adds what serving needs on top of the shared model
code: lines of similar width are batched together in runs small enough to stay in the CPU's
caches, two runs are in flight at once, each line is decoded on its own timesteps (`Batching`),
and a page is split into lines first (`fedocr.serve.segment`).

ONNX Runtime is set up for small, shared CPUs: a fixed number of intra-op threads (default: all
cores, at most 2 per engine), one inter-op thread, sequential execution, and no spin-waiting
threads (spinning burns the cores that concurrent requests and other processes need).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedocr.charset import Charset
from fedocr.data import preprocess
from fedocr.data.preprocess import kept_height, resized_width
from fedocr.export import FORMAT, OUTPUT_NAME, file_digest, onnxruntime_module
from fedocr.model.signature import SignatureError, verify_file
from fedocr.model import (Decoded, LogitsFn, decode_logits, load_checkpoint, pad_lines, reread_off_density,
                          torch_logits_fn)
from fedocr.model.checkpoint import CheckpointError
from fedocr.model.config import INPUT_HEIGHT, WIDTH_STRIDE
from fedocr.serve.segment import Layout, LineCrop, SegmentConfig, TooManyLines, split_lines

Backend = Literal["onnx", "torch"]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the input image, x1/y1 exclusive


class ModelLoadError(CheckpointError):
    """A model file that cannot be served (missing, corrupt, foreign, or without metadata)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a served model is: shown by `GET /api/model` and stamped on every answer."""

    path: str
    backend: Backend
    version: str                       # first 12 hex digits of the file's SHA-256
    charset_size: int                  # classes, blank included
    charset_version: str
    quantization: str                  # "fp32" or "int8"
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> Any:
        """The federated run that produced the model, when provenance says so."""
        return self.provenance.get("run_id", self.provenance.get("run"))

    @property
    def round(self) -> Any:
        return self.provenance.get("round")


@dataclass(frozen=True)
class CharResult:
    """One recognised character: its confidence and the x-range of its CTC spike in the input
    image (approximate on a deskewed page: the range is mapped along the line's box)."""
    char: str
    confidence: float
    x0: int
    x1: int


@dataclass(frozen=True)
class LineResult:
    text: str
    confidence: float
    box: Box
    chars: tuple[CharResult, ...] = ()


def char_results(decoded: Decoded, crop_width: int, crop_height: int, box: Box) -> tuple[CharResult, ...]:
    """Each character of a decoded line with its x-range in the input image: timestep t covers
    columns [t, t + 1) * WIDTH_STRIDE of the preprocessed line, scaled back to the crop's width
    and along its box. `crop_height` is the rows preprocessing kept (`kept_height`)."""
    if len(decoded.char_spans) != len(decoded.text):
        return ()
    scale = crop_width / resized_width(crop_height, crop_width) * (box[2] - box[0]) / max(crop_width, 1)
    out = []
    for char, confidence, (first, last) in zip(decoded.text, decoded.char_confidences, decoded.char_spans):
        x0 = box[0] + int(first * WIDTH_STRIDE * scale)
        x1 = box[0] + int(np.ceil((last + 1) * WIDTH_STRIDE * scale))
        # A spike on the last timesteps can start past the crop's right edge (widths are padded
        # up to a multiple of WIDTH_STRIDE): keep every range non-empty and inside the box.
        x0 = min(max(box[0], x0), box[2] - 1)
        out.append(CharResult(char, round(confidence, 4), x0, min(box[2], max(x1, x0 + 1))))
    return tuple(out)


@dataclass(frozen=True)
class PageResult:
    text: str                          # lines joined in reading order
    confidence: float                  # mean of the lines' confidences (0 for a page without text)
    lines: tuple[LineResult, ...]
    width: int                         # of the image as read (turned by `angle`)
    height: int
    angle: int = 0                     # degrees the image was turned counter-clockwise to read it upright
    warning: str | None = None         # e.g. most of the page read with low confidence


# Page orientation: a page read with at least ORIENT_BELOW confidence is taken as upright; otherwise
# the image is also read turned by 90, 180 and 270 degrees, on a sample of its largest lines, and a
# turn that reads ORIENT_MARGIN more confidently than upright, and at least LOW_CONFIDENCE, wins (a
# model that reads nothing well turns nothing). Measured with the shipped model on rendered forms,
# read as served: upright 0.99-1.00, upside down 0.69-0.76, sideways 0.48-0.65 (bench/orientation.py).
ORIENT_BELOW = 0.85
ORIENT_MARGIN = 0.1
ORIENT_SAMPLE = 12        # lines per orientation: bounds the extra work (3 x 12 lines at most)
LOW_CONFIDENCE = 0.6      # a page read below this gets a warning instead of silent junk


@dataclass(frozen=True)
class Batching:
    """How the engine cuts many lines into runs of the network (see `plan_batches`), chosen with
    bench/batching.py: with batches of similar width and bounded area, and two runs in flight,
    32 lines cost far less per line than one."""

    batch_size: int = 32               # lines per run at most
    max_width_ratio: float = 1.25      # widest / narrowest line of a run: the rest is padding
    max_columns: int | None = 4096     # lines x padded width per run: larger runs outgrow the CPU caches
    # Runs in flight at once (threads; ONNX Runtime and NumPy release the GIL): the other run's
    # preprocessing, decoding and the LSTM's sequential steps fill a core that one run leaves idle.
    workers: int = 2


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


GRAPH_CLASSES = "graph-classes"   # added to the metadata read back: the class count the graph outputs


def onnx_logits_fn(path: Path, threads: int | None = None) -> tuple[LogitsFn, Callable[[], None], dict[str, str]]:
    """An ONNX Runtime session as a LogitsFn; a `release` that hands the session's unused arena
    memory back; and the file's metadata (with GRAPH_CLASSES when the graph states its output size).

    The arena keeps the buffers of the largest run so far. Turning it off, or shrinking it after
    every run, makes every run slower; so the server's MemoryTrimmer calls `release` about once a
    second instead: one tiny run with shrinkage on."""
    ort = onnxruntime_module()  # with its telemetry off
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    # Memory patterns plan one block per input shape and are kept per shape; ours change with
    # every batch (bench/hostile.py: at rest +1.2% over requests 5-10k without them, +7.6% with).
    options.enable_mem_pattern = False
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable graphs
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    classes = next((o.shape[-1] for o in session.get_outputs() if o.name == OUTPUT_NAME), None)
    if isinstance(classes, int):   # a symbolic size says nothing; a number must match the charset
        metadata[GRAPH_CLASSES] = str(classes)

    def run(images: np.ndarray, widths: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {"images": images, "widths": widths})[0]

    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    tiny = {"images": np.zeros((1, 1, INPUT_HEIGHT, WIDTH_STRIDE), np.float32),
            "widths": np.full((1,), WIDTH_STRIDE, np.int64)}

    def release() -> None:
        session.run([OUTPUT_NAME], tiny, shrink)   # frees the arena's chunks no run is using

    return run, release, metadata


def plan_batches(widths: Sequence[int], batching: Batching = Batching()) -> list[list[int]]:
    """Cut lines (by preprocessed width) into batches, as lists of indices into `widths`.

    Lines are taken in order of width; a batch closes when it holds `batch_size` lines, when
    the next line is more than `max_width_ratio` times as wide as its narrowest (padding), or
    when its padded area (lines x widest width) would exceed `max_columns` (None: no limit).
    """
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    b = batching
    for i in order:
        if batch and (len(batch) == b.batch_size or widths[i] > b.max_width_ratio * widths[batch[0]]
                      or (b.max_columns is not None and (len(batch) + 1) * widths[i] > b.max_columns)):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def resolve_model_path(path: str | Path, prefer_onnx: bool = True) -> Path:
    """The file to serve: `path` itself, or for a .pt the sibling .onnx when one exists."""
    path = Path(path)
    if prefer_onnx and path.suffix == ".pt" and path.with_suffix(".onnx").is_file():
        return path.with_suffix(".onnx")
    return path


class Stopped(RuntimeError):
    """Recognition was asked to stop (the request's time budget ran out, or its client left)."""


Stop = Callable[[], bool]   # asked before each batch of lines: True stops the work with Stopped


def check_stop(stop: Stop | None) -> None:
    if stop is not None and stop():
        raise Stopped("recognition stopped")


class Engine:
    """A loaded model: recognise lines and whole pages. Thread-safe; load once, share."""

    def __init__(self, logits_fn: LogitsFn, charset: Charset, info: ModelInfo, batching: Batching | None = None,
                 segment: SegmentConfig | None = None, release_memory: Callable[[], None] | None = None,
                 reread: bool = True) -> None:
        self.logits_fn, self.charset, self.info = logits_fn, charset, info
        self.reread = reread   # read lines set off the model's density again (fedocr.model.reread_off_density)
        self.release_memory = release_memory   # hands the runtime's cached buffers back (None: nothing to hand)
        self.batching = batching or Batching()
        self.segment = segment or SegmentConfig()

    def recognize(self, crops: Sequence[np.ndarray], beam_width: int = 0, stop: Stop | None = None,
                  reread: bool | None = None) -> list[Decoded]:
        """Line images (any size, gray or colour) -> decoded lines, in input order.

        Lines run in the batches `plan_batches` cuts, up to `batching.workers` at a time. Each
        line is decoded over its own timesteps only: decoding a padded batch in one piece made
        NumPy allocate (and the kernel page in) batch-sized temporaries, which cost more than
        the network itself at batch 32. A line's result does not depend on its batch (the
        graph masks padding and an int8 export quantises per line, see `fedocr.export`).
        `stop` is asked before each batch (a server's time budget, or a client that left).
        With `reread` (default: the engine's), lines whose first reading says they are set much
        denser or wider than the model reads best are read once more, rescaled (`reread_off_density`).
        """
        reread = self.reread if reread is None else reread
        workers = min(self.batching.workers, len(crops))
        if workers <= 1:
            return self._recognize(crops, beam_width, map, stop, reread)
        with ThreadPoolExecutor(workers, thread_name_prefix="fedocr-batch") as pool:
            return self._recognize(crops, beam_width, pool.map, stop, reread)

    def _recognize(self, crops: Sequence[np.ndarray], beam_width: int,
                   map_fn: Callable[..., Iterable[Any]], stop: Stop | None, reread: bool) -> list[Decoded]:
        def run(lines: Sequence[np.ndarray], batch: list[int]) -> list[Decoded]:
            check_stop(stop)
            images, widths = pad_lines([lines[i] for i in batch])
            logits = self.logits_fn(images, widths)
            return [decode_logits(logits[row:row + 1, :max(int(w) // WIDTH_STRIDE, 1)], widths[row:row + 1],
                                  self.charset, beam_width)[0] for row, w in enumerate(widths)]

        def read(lines: Sequence[np.ndarray]) -> list[Decoded]:
            batches = plan_batches([line.shape[1] for line in lines], self.batching)
            results: list[Decoded | None] = [None] * len(lines)
            for batch, decoded in zip(batches, map_fn(lambda b: run(lines, b), batches)):
                for i, d in zip(batch, decoded):
                    results[i] = d
            return [r for r in results if r is not None]

        lines = list(map_fn(preprocess, crops))
        first = read(lines)
        return reread_off_density(lines, first, read) if reread else first

    def ocr(self, image: np.ndarray, beam_width: int = 0, layout: Layout = "auto", orient: bool = True,
            stop: Stop | None = None) -> PageResult:
        """A page or a single line (uint8 gray or colour) -> lines with boxes, joined text.
        `layout`: "line" (the image is one line), "page" (always segment) or "auto". `orient`: read
        a page that reads poorly upright also turned (see ORIENT_BELOW); boxes then refer to the
        turned image, whose size and angle the result gives. `stop`: see `recognize` (raises Stopped)."""
        page, upright = self._read(image, beam_width, layout, stop)
        if orient and page.lines and page.confidence < ORIENT_BELOW:
            turns = (2,) if layout == "line" else (1, 2, 3)   # a line turned sideways is no longer a line
            scores = {k: self._orientation_score(np.ascontiguousarray(np.rot90(image, k)), layout, stop)
                      for k in turns}
            best = max(scores, key=lambda k: scores[k])
            if scores[best] >= max(upright + ORIENT_MARGIN, LOW_CONFIDENCE):   # a turn must also read well
                page = replace(self._read(np.ascontiguousarray(np.rot90(image, best)), beam_width, layout, stop)[0],
                               angle=90 * best)
        if page.lines and page.confidence < LOW_CONFIDENCE:
            page = replace(page, warning=f"low confidence ({page.confidence:.2f}): the image may hold no text this "
                                         f"model reads, or be too degraded; check the result")
        return page

    def _orientation_score(self, image: np.ndarray, layout: Layout, stop: Stop | None) -> float:
        """Mean confidence on the ORIENT_SAMPLE largest lines of `image` (0 when it has none, or
        more lines than the limit: such a turn is not the page's)."""
        check_stop(stop)
        try:
            crops = split_lines(image, self.segment, layout)
        except TooManyLines:
            return 0.0
        sample = _orientation_sample(crops)
        # One reading a line: a turn is judged, not read out, and this bounds its work.
        decoded = self.recognize([crops[i].image for i in sample], stop=stop, reread=False) if sample else []
        return float(np.mean([d.confidence for d in decoded])) if decoded else 0.0

    def _read(self, image: np.ndarray, beam_width: int, layout: Layout,
              stop: Stop | None = None) -> tuple[PageResult, float]:
        """The page, and its orientation score from the lines just read (not read a second time)."""
        check_stop(stop)
        crops = split_lines(image, self.segment, layout)
        decoded = self.recognize([c.image for c in crops], beam_width, stop) if crops else []
        sample = _orientation_sample(crops)
        score = float(np.mean([decoded[i].confidence for i in sample])) if sample else 0.0
        lines = tuple(LineResult(d.text, round(d.confidence, 4), c.box,
                                 char_results(d, c.image.shape[1], kept_height(c.image), c.box))
                      for c, d in zip(crops, decoded))
        rows: list[list[str]] = []
        last_row = None
        for crop, line in zip(crops, lines):
            if crop.row != last_row:
                rows.append([])
                last_row = crop.row
            if line.text:
                rows[-1].append(line.text)
        text = "\n".join(" ".join(r) for r in rows if r)
        confidence = round(float(np.mean([l.confidence for l in lines])), 4) if lines else 0.0
        return PageResult(text, confidence, lines, int(image.shape[1]), int(image.shape[0])), score


def _orientation_sample(crops: Sequence[LineCrop]) -> list[int]:
    """Indices of the ORIENT_SAMPLE largest crops: the lines a page's orientation is judged on."""
    return sorted(range(len(crops)), key=lambda i: crops[i].image.size, reverse=True)[:ORIENT_SAMPLE]


def load_engine(path: str | Path, threads: int | None = None, prefer_onnx: bool = True,
                batching: Batching | None = None, trust: Path | None = None) -> Engine:
    """Load a model file: .onnx with ONNX Runtime; .pt with ONNX Runtime when a sibling .onnx
    exists (and prefer_onnx), else with PyTorch. `trust`: a public key whose signature the file
    must carry (model.signature), checked before anything is loaded."""
    path = resolve_model_path(path, prefer_onnx)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    if trust is not None:
        try:
            verify_file(path, trust)
        except SignatureError as exc:
            raise ModelLoadError(str(exc)) from None
    version = file_digest(path)[:12]
    if path.suffix == ".onnx":
        logits_fn, release, meta = onnx_logits_fn(path, threads)
        if meta.get("format") != FORMAT:
            raise ModelLoadError(f"{path}: ONNX file without fedocr metadata; export it with `fedocr export`")
        try:
            charset = Charset.from_dict(json.loads(meta["charset"]))
            config = json.loads(meta.get("config", "{}"))
            provenance = json.loads(meta.get("provenance", "{}"))
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"{path}: damaged fedocr metadata ({exc})") from exc
        if GRAPH_CLASSES in meta and int(meta[GRAPH_CLASSES]) != len(charset):
            raise ModelLoadError(f"{path}: the graph outputs {meta[GRAPH_CLASSES]} classes but its charset has "
                                 f"{len(charset)} (blank included): mismatched metadata")
        info = ModelInfo(str(path), "onnx", version, len(charset), charset.version, meta.get("quantization", "fp32"),
                         config, provenance)
        return Engine(logits_fn, charset, info, batching or Batching(workers=threads or default_threads()),
                      release_memory=release)
    if threads:
        import torch

        torch.set_num_threads(threads)
    ckpt = load_checkpoint(path)
    info = ModelInfo(str(path), "torch", version, len(ckpt.charset), ckpt.charset.version, "fp32",
                     ckpt.config.to_dict(), ckpt.provenance)
    return Engine(torch_logits_fn(ckpt.model), ckpt.charset, info,
                  batching or Batching(workers=threads or default_threads()))
