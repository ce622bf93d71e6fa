"""Export a checkpoint to ONNX (dynamic batch and width) and verify it against PyTorch.

The graph returns logits only (decoding stays in Python and is shared with PyTorch), so parity
is checked on log-probabilities over each line's valid timesteps and on the decoded text. The
ONNX file is self-describing: the charset, model config and provenance (which federated run
and round made it, or which training command) travel in its `metadata_props`. An export that
fails verification is not written.

Optional int8 dynamic quantisation follows ONNX Runtime's recipe (`quant_pre_process`, then
`quantize_dynamic`) on MatMul and LSTM only: quantising the convolutions makes them slower on
this class of CPU (see the measured notes in the README).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedocr import __version__
from fedocr.charset import Charset
from fedocr.data import SyntheticLines, preprocess
from fedocr.model import CRNN, decode_logits, load_checkpoint, log_softmax, pad_lines, torch_logits_fn
from fedocr.model.checkpoint import atomic_write
from fedocr.model.crnn import INPUT_HEIGHT, WIDTH_STRIDE

FORMAT = "fedocr-onnx/1"
OPSET = 17
INPUT_NAMES = ("images", "widths")
OUTPUT_NAME = "logits"


class ExportError(ValueError):
    """The exported graph does not reproduce the PyTorch model closely enough."""


@dataclass(frozen=True)
class Tolerance:
    """How close ONNX Runtime must stay to PyTorch; int8 is an approximation, so it is looser."""

    max_logprob_diff: float      # largest |log p_ort - log p_torch| over valid timesteps, classes with p > 1e-4
    min_text_agreement: float    # share of lines whose decoded text must be identical


FP32_TOLERANCE = Tolerance(max_logprob_diff=1e-3, min_text_agreement=1.0)
INT8_TOLERANCE = Tolerance(max_logprob_diff=2.0, min_text_agreement=0.9)


@dataclass(frozen=True)
class ParityReport:
    lines: int
    max_logprob_diff: float
    text_agreement: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_lines(charset: Charset, n: int = 16, seed: int = 20240501) -> list[np.ndarray]:
    """Rendered lines of varied width for verification, normalised to the model's charset."""
    lines = SyntheticLines("public", n, seed=seed, charset=charset)
    return [preprocess(lines[i][0]) for i in range(n)]


def compare(reference: Any, candidate: Any, lines: Sequence[np.ndarray], charset: Charset,
            tolerance: Tolerance) -> ParityReport:
    """Run both logits functions on the same padded batch of lines and compare the results."""
    images, widths = pad_lines(list(lines))
    ref_logits, cand_logits = reference(images, widths), candidate(images, widths)
    ref_lp, cand_lp = log_softmax(ref_logits.astype(np.float32)), log_softmax(cand_logits.astype(np.float32))
    worst = 0.0
    for i, width in enumerate(widths):
        t = max(int(width) // WIDTH_STRIDE, 1)
        # Compare where probability mass is: log p of classes below 1e-4 is noise in either backend.
        mask = np.exp(ref_lp[i, :t]) > 1e-4
        worst = max(worst, float(np.abs(ref_lp[i, :t] - cand_lp[i, :t])[mask].max()))
    ref_text = [d.text for d in decode_logits(ref_logits, widths, charset)]
    cand_text = [d.text for d in decode_logits(cand_logits, widths, charset)]
    agreement = float(np.mean([a == b for a, b in zip(ref_text, cand_text)]))
    passed = worst <= tolerance.max_logprob_diff and agreement >= tolerance.min_text_agreement
    return ParityReport(len(lines), worst, agreement, passed)


def ort_logits_fn_from_path(path: Path) -> Any:
    """A LogitsFn over an ONNX file (used for verification; serving uses `engine.OnnxBackend`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images, widths: session.run([OUTPUT_NAME], {"images": images, "widths": widths})[0]


@contextlib.contextmanager
def _native_stderr_kept_unless_failing() -> Iterator[None]:
    """Hold back what C++ code writes to stderr (torch's PackPadded shape-inference warnings,
    harmless here and printed before every successful export); replay it if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _export_graph(model: CRNN, path: Path) -> None:
    images = torch.zeros(2, 1, INPUT_HEIGHT, 64)
    widths = torch.tensor([64, 40], dtype=torch.int64)
    with warnings.catch_warnings(), _native_stderr_kept_unless_failing():
        warnings.simplefilter("ignore")  # PackPadded shape-inference warnings are harmless here
        torch.onnx.export(model, (images, widths), str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes={"images": {0: "batch", 3: "width"}, "widths": {0: "batch"},
                                        OUTPUT_NAME: {0: "batch", 1: "steps"}})


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(dst.name + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=["MatMul", "LSTM"],
                         weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "fedocr CRNN: (images N x 1 x 32 x W float32, widths N int64) -> logits N x W/4 x C"
    onnx.save(proto, str(path))


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ExportResult:
    path: Path
    quantized: bool
    parity: ParityReport
    bytes: int


def export_onnx(checkpoint: str | Path, out: str | Path, int8: bool = False,
                lines: Sequence[np.ndarray] | None = None, tolerance: Tolerance | None = None) -> ExportResult:
    """Export `checkpoint` to `out`, verify it on `lines` (rendered ones by default), write atomically.

    Raises ExportError (and writes nothing) when ONNX Runtime does not match PyTorch within
    `tolerance` (default FP32_TOLERANCE, or INT8_TOLERANCE with int8=True).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    ckpt = load_checkpoint(checkpoint)
    lines = list(lines) if lines is not None else sample_lines(ckpt.charset)
    tolerance = tolerance or (INT8_TOLERANCE if int8 else FP32_TOLERANCE)
    with tempfile.TemporaryDirectory(prefix="fedocr-export-") as tmp:
        graph = Path(tmp) / "model.onnx"
        _export_graph(ckpt.model, graph)
        if int8:
            quantized = Path(tmp) / "model.int8.onnx"
            _quantize(graph, quantized)
            graph = quantized
        report = compare(torch_logits_fn(ckpt.model), ort_logits_fn_from_path(graph), lines, ckpt.charset, tolerance)
        if not report.passed:
            raise ExportError(f"{out}: ONNX Runtime does not match PyTorch on {report.lines} lines "
                              f"(max log-prob diff {report.max_logprob_diff:.2e}, "
                              f"text agreement {report.text_agreement:.0%}); nothing written")
        provenance = dict(ckpt.provenance)
        provenance["export"] = {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "fedocr": __version__,
            "source": checkpoint.name, "source_sha256": file_digest(checkpoint), "opset": OPSET,
            "quantization": "int8-dynamic (MatMul, LSTM)" if int8 else None, "parity": report.to_dict()}
        _write_metadata(graph, {
            "format": FORMAT, "charset": json.dumps(ckpt.charset.to_dict(), ensure_ascii=False),
            "config": json.dumps(ckpt.config.to_dict()), "provenance": json.dumps(provenance, ensure_ascii=False),
            "quantization": "int8" if int8 else "fp32"})
        atomic_write(out, lambda tmp_path: tmp_path.write_bytes(graph.read_bytes()))
    return ExportResult(out, int8, report, out.stat().st_size)
