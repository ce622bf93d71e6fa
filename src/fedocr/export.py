"""Export a checkpoint to ONNX (dynamic batch and width) and verify it against PyTorch.

The graph returns logits only (decoding stays in Python and is shared with PyTorch), so parity
is checked on log-probabilities over each line's valid timesteps and on the decoded text. The
ONNX file is self-describing: the charset, model config and provenance (which federated run
and round made it, or which training command) travel in its `metadata_props`. An export that
fails verification is not written.

Optional int8 dynamic quantisation follows ONNX Runtime's recipe (`quant_pre_process`, then
`quantize_dynamic`) on the MatMuls only (quantising the convolutions makes them slower on this
class of CPU, see the measured notes in the README), with one change: ONNX Runtime picks an
activation's int8 scale over the whole tensor, i.e. over every line of a batch, so a line's
text could change with the lines batched beside it. `_per_line_activation_scales` rewrites each
dynamic quantisation to pick the scale per line, over that line's own timesteps, so a line's
logits are the same alone or in any batch. The LSTMs stay fp32 for the same reason: ONNX
Runtime's int8 LSTM (DynamicQuantizeLSTM) also quantises across the batch and has no per-line
option.

ONNX Runtime keeps a telemetry store (`~/.cache/Microsoft/DeveloperTools/.onnxruntime`: a device
id, the process and model names); importing this module turns it off for the process.
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
from typing import TYPE_CHECKING, Any

import numpy as np

from fedocr import __version__
from fedocr.charset import Charset
from fedocr.data import SyntheticLines, preprocess
from fedocr.model import decode_logits, load_checkpoint, log_softmax, pad_lines, torch_logits_fn
from fedocr.model.checkpoint import atomic_write
from fedocr.model.config import INPUT_HEIGHT, WIDTH_STRIDE

if TYPE_CHECKING:
    from fedocr.model.crnn import CRNN

# ONNX Runtime opens its telemetry store when `onnxruntime` is first imported (onnxruntime 1.32
# reads this variable then; `disable_telemetry_events()` after the import does not stop the file
# being written), so it must be set before any import of it: this module is imported by every
# fedocr module that creates a session, before it imports onnxruntime.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

FORMAT = "fedocr-onnx/1"
OPSET = 17
INPUT_NAMES = ("images", "widths")
QUANTIZATION = "int8-dynamic per line (MatMul; LSTM fp32)"
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


def onnxruntime_module() -> Any:
    """`onnxruntime`, imported with its telemetry off (see ORT_DISABLE_TELEMETRY above); when
    something imported it before fedocr, its event telemetry is at least switched off."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort


def ort_logits_fn_from_path(path: Path) -> Any:
    """A LogitsFn over an ONNX file (used for verification; serving uses `engine.onnx_logits_fn`)."""
    ort = onnxruntime_module()
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
    import torch   # here: the ONNX readers of this module (the server, `fedocr ocr`) run without torch

    images = torch.zeros(2, 1, INPUT_HEIGHT, 64)
    widths = torch.tensor([64, 40], dtype=torch.int64)
    with warnings.catch_warnings(), _native_stderr_kept_unless_failing():
        warnings.simplefilter("ignore")  # PackPadded shape-inference warnings are harmless here
        torch.onnx.export(model, (images, widths), str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes={"images": {0: "batch", 3: "width"}, "widths": {0: "batch"},
                                        OUTPUT_NAME: {0: "batch", 1: "steps"}})


def _quantize(src: Path, dst: Path) -> None:
    onnxruntime_module()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(dst.name + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        _per_line_activation_scales(dst)
    finally:
        prepared.unlink(missing_ok=True)


def _per_line_activation_scales(path: Path) -> None:
    """Rewrite each `DynamicQuantizeLinear` (one uint8 scale for the whole (N, T, K) activation)
    into the same quantisation per line n, over its valid timesteps t < max(widths[n] // 4, 1):
    padded timesteps are zeroed first, which cannot move a range that always includes 0. The
    MatMulInteger that used the activation then runs without A's zero point and subtracts
    zero_point[n] * column sums of B in int32, which is exact. For a single unpadded line this is
    ONNX Runtime's own arithmetic, so the batch-1 result is kept."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    consts = {"pl/zero_i": np.array(0, np.int64), "pl/one_i": np.array(1, np.int64),
              "pl/stride": np.array(WIDTH_STRIDE, np.int64), "pl/zero_f": np.array(0.0, np.float32), "pl/one_f": np.array(1.0, np.float32),
              "pl/qmax": np.array(255.0, np.float32), "pl/last": np.array([-1], np.int64),
              "pl/axes_1_2": np.array([1, 2], np.int64)}
    # (N, 1, 1) valid timesteps per line, as the model counts them
    nodes_before: list[Any] = [
        helper.make_node("Div", ["widths", "pl/stride"], ["pl/steps_raw"]),
        helper.make_node("Max", ["pl/steps_raw", "pl/one_i"], ["pl/steps"]),
        helper.make_node("Unsqueeze", ["pl/steps", "pl/axes_1_2"], ["pl/steps_n11"])]
    after: dict[str, list[Any]] = {}   # nodes to insert after the named MatMulInteger
    rewritten = []
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            rewritten.append(node)
            continue
        x, (q, scale, zero) = node.input[0], node.output
        p = node.name + "/per_line"
        rewritten += nodes_before + [
            helper.make_node("Shape", [x], [p + "/shape"]),
            helper.make_node("Gather", [p + "/shape", "pl/one_i"], [p + "/t"], axis=0),
            helper.make_node("Range", ["pl/zero_i", p + "/t", "pl/one_i"], [p + "/ts"]),
            helper.make_node("Unsqueeze", [p + "/ts", "pl/last"], [p + "/ts_t1"]),
            helper.make_node("Less", [p + "/ts_t1", "pl/steps_n11"], [p + "/valid"]),          # (N, T, 1)
            helper.make_node("Where", [p + "/valid", x, "pl/zero_f"], [p + "/x"]),
            helper.make_node("ReduceMin", [p + "/x"], [p + "/lo_raw"], axes=[1, 2], keepdims=1),
            helper.make_node("ReduceMax", [p + "/x"], [p + "/hi_raw"], axes=[1, 2], keepdims=1),
            helper.make_node("Min", [p + "/lo_raw", "pl/zero_f"], [p + "/lo"]),
            helper.make_node("Max", [p + "/hi_raw", "pl/zero_f"], [p + "/hi"]),
            helper.make_node("Sub", [p + "/hi", p + "/lo"], [p + "/range"]),
            helper.make_node("Div", [p + "/range", "pl/qmax"], [p + "/step"]),
            helper.make_node("Equal", [p + "/range", "pl/zero_f"], [p + "/flat"]),
            helper.make_node("Where", [p + "/flat", "pl/one_f", p + "/step"], [scale]),        # (N, 1, 1); 1 for an all-zero line, as ORT does
            helper.make_node("Div", [p + "/lo", scale], [p + "/lo_q"]),
            helper.make_node("Neg", [p + "/lo_q"], [p + "/zero_raw"]),
            helper.make_node("Round", [p + "/zero_raw"], [p + "/zero_round"]),
            helper.make_node("Clip", [p + "/zero_round", "pl/zero_f", "pl/qmax"], [p + "/zero_f"]),
            helper.make_node("Cast", [p + "/zero_f"], [zero], to=TensorProto.UINT8),         # (N, 1, 1)
            helper.make_node("Reshape", [scale, "pl/last"], [p + "/scale_n"]),
            helper.make_node("Reshape", [zero, "pl/last"], [p + "/zero_n"]),
            helper.make_node("QuantizeLinear", [p + "/x", p + "/scale_n", p + "/zero_n"], [q], axis=0)]
        nodes_before = []
        for matmul in (n for n in graph.node if q in n.input):
            if matmul.op_type != "MatMulInteger" or numpy_helper.to_array(weights[matmul.input[3]]).any():
                raise ExportError(f"unexpected quantised graph around {node.name}: {matmul.op_type}")
            b = numpy_helper.to_array(weights[matmul.input[1]]).astype(np.int64)
            consts[matmul.name + "/b_colsum"] = b.sum(axis=0).astype(np.int32)
            out = matmul.output[0]
            matmul.output[0] = out + "/uncorrected"
            del matmul.input[2:]
            after[matmul.name] = [
                helper.make_node("Cast", [zero], [p + "/zero_i32"], to=TensorProto.INT32),
                helper.make_node("Mul", [p + "/zero_i32", matmul.name + "/b_colsum"], [p + "/correction"]),
                helper.make_node("Sub", [out + "/uncorrected", p + "/correction"], [out])]
    ordered = []
    for node in rewritten:
        ordered += [node] + after.get(node.name, [])
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


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
            "quantization": QUANTIZATION if int8 else None, "parity": report.to_dict()}
        _write_metadata(graph, {
            "format": FORMAT, "charset": json.dumps(ckpt.charset.to_dict(), ensure_ascii=False),
            "config": json.dumps(ckpt.config.to_dict()), "provenance": json.dumps(provenance, ensure_ascii=False),
            "quantization": "int8" if int8 else "fp32"})
        atomic_write(out, lambda tmp_path: tmp_path.write_bytes(graph.read_bytes()))
    return ExportResult(out, int8, report, out.stat().st_size)
