"""`fedocr export | serve`: the serving part's commands."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fedocr.cli.common import CliError, check_writable_file, default_model

TOKEN_ENV = "FEDOCR_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's sub-commands to the parser."""
    p = sub.add_parser("export", help="export a checkpoint to ONNX, verified against PyTorch",
                       description="Export MODEL.pt to ONNX (dynamic batch and width) with its charset and "
                                   "provenance in the metadata; fails, writing nothing, when ONNX Runtime "
                                   "does not match PyTorch on rendered sample lines.")
    p.add_argument("checkpoint", type=Path, metavar="MODEL.pt")
    p.add_argument("out", type=Path, metavar="MODEL.onnx")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of MatMul and LSTM")
    p.add_argument("--lines", type=int, default=16, help="rendered lines to verify on (default 16)")
    p.set_defaults(run=run_export)

    from fedocr.serve.images import Limits

    limits = Limits()
    p = sub.add_parser("serve", help="REST API + web page on CPU (ONNX Runtime)",
                       description="Serve the OCR API (/api, docs at /docs) and the web page (/).")
    p.add_argument("--model", type=Path, help="model (.onnx, or .pt: its sibling .onnx is used when present); "
                                              "default: the shipped model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help=f"require this bearer token on /api (or set ${TOKEN_ENV})")
    p.add_argument("--workers", type=int, default=2, help="recognitions running at once (default 2)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per recognition (default: cores, at most 2)")
    p.add_argument("--cache", type=int, default=256, help="results cached by image hash (0: off)")
    p.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                   help="check the model file this often and hot-swap it when it changes (0: off)")
    p.add_argument("--max-bytes", type=int, default=limits.max_bytes, help="bytes per image")
    p.add_argument("--max-pixels", type=int, default=limits.max_pixels, help="pixels per image")
    p.add_argument("--max-files", type=int, default=limits.max_files, help="images per batch request")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this origin (repeatable); none by default")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run_serve)


def run_export(args: argparse.Namespace) -> int:
    from fedocr.export import ExportError, export_onnx, sample_lines
    from fedocr.model import load_checkpoint

    if args.lines < 1:
        raise CliError("--lines must be at least 1", 2)
    out = check_writable_file(args.out)
    lines = sample_lines(load_checkpoint(args.checkpoint).charset, args.lines)
    try:
        result = export_onnx(args.checkpoint, out, int8=args.int8, lines=lines)
    except ExportError as exc:
        raise CliError(str(exc), 1) from exc
    p = result.parity
    print(f"wrote {out} ({result.bytes / 1e6:.1f} MB, {'int8' if result.quantized else 'fp32'}); "
          f"verified on {p.lines} lines: max log-prob diff {p.max_logprob_diff:.1e}, "
          f"text identical on {p.text_agreement:.0%}", file=sys.stderr)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fedocr.serve.app import ServeConfig, create_app, limit_malloc_arenas
    from fedocr.serve.hotswap import ModelSlot
    from fedocr.serve.images import Limits

    for name in ("workers", "port", "max_bytes", "max_pixels", "max_files"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1", 2)
    base = Limits()
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_files=args.max_files,
                    max_batch_bytes=max(base.max_batch_bytes, args.max_bytes))
    config = ServeConfig(model=args.model or default_model(), token=args.token or os.environ.get(TOKEN_ENV) or None,
                         limits=limits, cache_size=args.cache, workers=args.workers, threads=args.threads,
                         watch_s=args.watch, cors_origins=tuple(args.cors_origin))
    limit_malloc_arenas()                            # a long-running server must not creep up in memory
    slot = ModelSlot(config.model, config.threads)  # load before binding the port: a bad model fails fast
    info = slot.engine.info
    print(f"serving {info.path} ({info.backend}, {info.quantization}, version {info.version}) "
          f"on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(create_app(config, slot), host=args.host, port=args.port, log_level=args.log_level)
    return 0
