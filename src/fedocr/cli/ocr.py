"""`fedocr ocr`: image files, folders of them, PDFs (each page) and stdin (`-`) in; plain text,
JSON Lines or TSV out; optionally each image with its line boxes drawn (`--annotate DIR`).

Every input is read with the API's decoder (`fedocr.serve.images`: Pillow, pixel limits checked
before decoding, EXIF orientation, 16-bit/float/alpha/palette/CMYK), so the CLI and the server
read a file alike. An input that cannot be read gets a one-line error in its place and the rest
still get their results; the exit code then says so (3).
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedocr.cli.common import (EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE, CliError, check_beam, check_writable_folder,
                               error_exit_code, error_message, print_json, report_error)

if TYPE_CHECKING:
    import numpy as np

    from fedocr.serve.engine import PageResult
    from fedocr.serve.images import Limits

CLI_MAX_BYTES = 2**31        # bytes of one input file (the pixel limits still hold)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
PDF_MAGIC = b"%PDF"
TSV_HEADER = "image\tpage\tline\tconfidence\tx0\ty0\tx1\ty1\ttext"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fedocr.serve.segment import SegmentConfig

    max_lines = SegmentConfig().max_lines
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files (PNG, JPEG, BMP, TIFF, WebP, GIF), PDF files (each page), folders of "
                        "them (not recursive), or - for one image or PDF on stdin")
    p.add_argument("--model", type=Path, help="model (.onnx, or .pt: its sibling .onnx is used when present); "
                                              "default: the shipped model")
    p.add_argument("--trust", type=Path, metavar="KEY.pub",
                   help="use the model only if it is signed by this Ed25519 public key (`fedocr fl signing-key`)")
    p.add_argument("--beam", type=int, default=0, help="beam width (0: greedy)")
    p.add_argument("--layout", choices=["auto", "line", "page"], default="auto",
                   help="auto: one line or a page, decided per image (an underline or table rules do not split a "
                        "line); line: each image is one text line; page: always split into lines")
    p.add_argument("--max-lines", type=int, default=max_lines,
                   help=f"refuse an image with more text lines than this, before recognising any (default {max_lines})")
    p.add_argument("--format", choices=["text", "json", "tsv"], default="text",
                   help="text: the text (several inputs: each after a '==> INPUT <==' line); json: JSON Lines, one "
                        "object per image or PDF page in input order ({\"image\", \"error\"} for one that failed); "
                        "tsv: one row per text line with its confidence and box, after a header row")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--dpi", type=int, default=200, help="resolution PDF pages are rendered at (default 200)")
    p.add_argument("--annotate", type=Path, metavar="DIR",
                   help="also write each image (or PDF page) with its line boxes drawn to DIR/NAME.png")
    p.set_defaults(run=run_ocr)


@dataclass(frozen=True)
class Source:
    """One image to read: from a file, a PDF page or stdin; `load` raises CliError when it cannot."""

    label: str                            # the input as given ("-" for stdin)
    page: int | None                      # 1-based page of a PDF
    load: Callable[[], np.ndarray]

    @property
    def name(self) -> str:
        return self.label + (f" (page {self.page})" if self.page else "")


def _failing(label: str, error: CliError) -> Source:
    def load() -> np.ndarray:
        raise error
    return Source(label, None, load)


def _decoded(label: str, data: bytes, limits: Limits) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from fedocr.serve.images import BadImage, decode_upload

        try:
            return decode_upload(data, limits, label)
        except BadImage as exc:
            raise CliError(exc.message, EXIT_INPUT) from None
    return load


def _pdf_pages(label: str, data: bytes, dpi: int, limits: Limits) -> list[Source]:
    """One source per page, rendered in gray at `dpi` when read; a page over the pixel limits fails alone."""
    import numpy as np
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        return [_failing(label, CliError(f"{label}: not a readable PDF ({exc})", EXIT_INPUT))]

    def render(index: int) -> np.ndarray:
        try:
            return _render(document, index)
        except pdfium.PdfiumError as exc:
            raise CliError(f"{label} page {index + 1}: cannot render ({exc})", EXIT_INPUT) from None

    def _render(document: pdfium.PdfDocument, index: int) -> np.ndarray:
        page = document[index]
        width, height = (math.ceil(side * dpi / 72) for side in page.get_size())   # as PDFium rounds
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise CliError(f"{label} page {index + 1}: {width}x{height} pixels at {dpi} dpi; the limit is "
                           f"{limits.max_pixels:,} pixels and {limits.max_side:,} per side (lower --dpi)", EXIT_INPUT)
        pixels = page.render(scale=dpi / 72, grayscale=True).to_numpy()
        return np.ascontiguousarray(pixels.reshape(pixels.shape[0], pixels.shape[1], -1)[..., 0])

    return [Source(label, i + 1, lambda i=i: render(i)) for i in range(len(document))]


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise CliError(f"{path}: no such file", EXIT_INPUT)
    if not path.is_file():   # a FIFO or a device would block or never end
        raise CliError(f"{path}: not a regular file", EXIT_INPUT)
    if path.stat().st_size > CLI_MAX_BYTES:
        raise CliError(f"{path}: over {CLI_MAX_BYTES:,} bytes", EXIT_INPUT)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc.strerror or exc})", EXIT_INPUT) from None


def _from_bytes(label: str, data: bytes, dpi: int, limits: Limits) -> list[Source]:
    if data.startswith(PDF_MAGIC):
        return _pdf_pages(label, data, dpi, limits)
    return [Source(label, None, _decoded(label, data, limits))]


def expand(inputs: list[str], dpi: int, limits: Limits, stdin: Callable[[], bytes]) -> Iterator[Source]:
    """The images the inputs hold, in order: a folder's images and PDFs sorted by name (its other
    files are counted on stderr, not read), each PDF page on its own. Lazily: a file is read when
    its turn comes, so a folder of thousands of scans is never in memory at once."""
    for given in inputs:
        if given == "-":
            yield from _from_bytes("-", stdin(), dpi, limits)
            continue
        path = Path(given)
        try:
            files = _folder(path) if path.is_dir() else [path]
        except OSError as exc:
            yield _failing(given, CliError(f"{given}: cannot list ({exc.strerror or exc})", EXIT_INPUT))
            continue
        for file in files:
            try:
                found = _from_bytes(str(file), _read_file(file), dpi, limits)
            except CliError as exc:
                found = [_failing(str(file), exc)]
            except OSError as exc:   # e.g. no permission to look at it
                found = [_failing(str(file), CliError(f"{file}: cannot read ({exc.strerror or exc})", EXIT_INPUT))]
            yield from found


def _folder(path: Path) -> list[Path]:
    """A folder's images and PDFs, sorted; the other files are counted on stderr."""
    entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES | {".pdf"}]
    if len(files) < len(entries):
        print(f"{path}: skipped {len(entries) - len(files)} file(s) that are not images or PDFs", file=sys.stderr)
    return files


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class Printer:
    """Writes each source's result (or error) in the chosen format, in input order."""

    def __init__(self, fmt: str, single: bool) -> None:
        self.fmt, self.single, self.started = fmt, single, False

    def result(self, source: Source, page: PageResult) -> None:
        where = {"image": source.label, **({"page": source.page} if source.page else {})}
        if self.fmt == "json":
            lines = [{"text": line.text, "confidence": line.confidence, "box": list(line.box),
                      "chars": [{"char": c.char, "confidence": c.confidence, "x": [c.x0, c.x1]} for c in line.chars]}
                     for line in page.lines]
            print_json({**where, "text": page.text, "confidence": page.confidence, "angle": page.angle,
                        "warning": page.warning, "lines": lines})
        elif self.fmt == "tsv":
            if not self.started:
                print(TSV_HEADER)
            for i, line in enumerate(page.lines, 1):
                print("\t".join([_escape(source.label), str(source.page or ""), str(i), f"{line.confidence:.4f}",
                                 *map(str, line.box), _escape(line.text)]))
        elif self.single:
            print(page.text)
        else:
            print(f"{'' if not self.started else chr(10)}==> {source.name} <==\n{page.text}")
        self.started = True
        sys.stdout.flush()

    def error(self, source: Source, exc: BaseException) -> None:
        if self.fmt == "json":
            print_json({"image": source.label, **({"page": source.page} if source.page else {}),
                        "error": error_message(exc)})


def _annotate(folder: Path, source: Source, image: np.ndarray, page: PageResult, taken: set[str]) -> None:
    """The image (turned as it was read) with its numbered line boxes, written atomically."""
    import cv2
    import numpy as np

    from fedocr.model.checkpoint import atomic_write

    turned = np.rot90(image, page.angle // 90) if page.angle else image
    canvas = cv2.cvtColor(np.ascontiguousarray(turned), cv2.COLOR_GRAY2BGR)
    for i, (x0, y0, x1, y1) in enumerate((line.box for line in page.lines), 1):
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (222, 111, 47), 2)
        cv2.putText(canvas, str(i), (x0 + 2, max(y0 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (222, 111, 47), 1)
    stem = "stdin" if source.label == "-" else Path(source.label).stem
    name = stem + (f"-p{source.page}" if source.page else "")
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    taken.add(unique)
    encoded = cv2.imencode(".png", canvas)[1].tobytes()
    atomic_write(folder / f"{unique}.png", lambda tmp: tmp.write_bytes(encoded))


def _check_options(args: argparse.Namespace) -> None:
    """Every option before any work: a bad one is a usage error (exit 2) with one line."""
    check_beam(args.beam)
    if args.max_lines < 1:
        raise CliError("--max-lines must be at least 1", EXIT_USAGE)
    if not 36 <= args.dpi <= 1200:
        raise CliError(f"--dpi must be between 36 and 1200, got {args.dpi}", EXIT_USAGE)
    if args.images.count("-") > 1:
        raise CliError("stdin (-) can be read once", EXIT_USAGE)
    if args.annotate is not None:
        try:
            args.annotate.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"--annotate {args.annotate}: cannot create ({exc.strerror or exc})", EXIT_OUTPUT) from None
        if not args.annotate.is_dir():
            raise CliError(f"--annotate {args.annotate}: not a folder", EXIT_OUTPUT)
        check_writable_folder(args.annotate)


def run_ocr(args: argparse.Namespace) -> int:
    """Each image or PDF page on its own: a bad one is reported (stderr, and in JSON as
    {"image", "error"}) and the rest still get their results; the exit code says that one failed."""
    _check_options(args)
    from dataclasses import replace

    from fedocr.cli.common import default_model
    from fedocr.serve.engine import load_engine  # ONNX Runtime for .onnx (or a sibling .onnx), else PyTorch
    from fedocr.serve.images import Limits, configure_pillow
    from fedocr.serve.segment import TooManyLines

    limits = Limits(max_bytes=CLI_MAX_BYTES)   # the API's pixel limits; a local scan may be a large file
    configure_pillow(limits)
    engine = load_engine(args.model or default_model(), trust=args.trust)
    engine.segment = replace(engine.segment, max_lines=args.max_lines)
    sources = expand(args.images, args.dpi, limits, lambda: sys.stdin.buffer.read())
    first = list(itertools.islice(sources, 2))   # one image alone prints its text without a header
    printer = Printer("json" if args.json else args.format, single=len(first) == 1 and not first[0].page)
    status, annotated = 0, set[str]()
    for source in itertools.chain(first, sources):
        try:
            image = source.load()
            page = engine.ocr(image, beam_width=args.beam, layout=args.layout)
            if args.annotate is not None:
                _annotate(args.annotate, source, image, page, annotated)
        except Exception as exc:
            if isinstance(exc, TooManyLines):  # checked after segmentation, before any line is recognised
                exc = CliError(f"{source.name}: {exc}; see --max-lines")
            elif error_exit_code(exc) is None:
                raise
            printer.error(source, exc)
            code = report_error(exc) or 1   # every failure gets its line on stderr
            status = status or code
            continue
        printer.result(source, page)
        if page.angle:
            print(f"{source.name}: read turned {page.angle} degrees counter-clockwise (boxes refer to the turned "
                  f"image)", file=sys.stderr)
        if page.warning:
            print(f"{source.name}: warning: {page.warning}", file=sys.stderr)
    return status

