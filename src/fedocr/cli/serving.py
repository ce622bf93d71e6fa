"""`fedocr export | serve`: the serving part's commands."""
from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from fedocr.cli.common import (EXIT_INPUT, EXIT_USAGE, CliError, OutputError, check_writable_file, default_model,
                               lazy_parser, positive)

TOKEN_ENV = "FEDOCR_TOKEN"
MAX_CONNECTIONS = 64   # open connections per server (uvicorn limit_concurrency); more answer 503


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's sub-commands to the parser."""
    p = sub.add_parser("export", help="export a checkpoint to ONNX, verified against PyTorch",
                       description="Export MODEL.pt to ONNX (dynamic batch and width) with its charset and "
                                   "provenance in the metadata; fails, writing nothing, when ONNX Runtime "
                                   "does not match PyTorch on rendered sample lines.")
    p.add_argument("checkpoint", type=Path, metavar="MODEL.pt", help="checkpoint to export")
    p.add_argument("out", type=Path, metavar="MODEL.onnx", help="ONNX file to write (only after it is verified)")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of the MatMuls, scales per line (LSTMs stay fp32)")
    p.add_argument("--lines", type=int, default=16, help="rendered lines to verify on (default 16)")
    p.set_defaults(run=run_export)

    lazy_parser(sub, "serve", _serve_arguments, help="REST API + web page on CPU (ONNX Runtime)",
                description="Serve the OCR API (/api, docs at /docs) and the web page (/). Give a token with "
                            f"--token-file or ${TOKEN_ENV} rather than --token, which other users see in `ps`.")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from fedocr.serve.app import ServeConfig
    from fedocr.serve.images import Limits

    limits, max_lines = Limits(), ServeConfig.max_lines
    p.add_argument("--model", type=Path, help="model (.onnx, or .pt: its sibling .onnx is used when present); "
                                              "default: the shipped model")
    p.add_argument("--trust", type=Path, metavar="KEY.pub",
                   help="serve only model files signed by this Ed25519 public key (`fedocr fl signing-key`): at start, "
                        "on reload and with --watch")
    p.add_argument("--runs", type=Path, metavar="RUNS.db",
                   help="a federation's run store: adds the dashboard (/dashboard, /api/runs), read-only")
    _listen_arguments(p)
    p.add_argument("--processes", type=int, default=1,
                   help="server processes on the one port, each with its own model in memory; a reload reaches "
                        "all of them (default 1)")
    p.add_argument("--workers", type=int, default=2, help="recognitions running at once in each process (default 2)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per recognition (default: cores, at most 2)")
    p.add_argument("--cache", type=int, default=256, help="results cached by image hash (0: off)")
    p.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                   help="check the model file this often and hot-swap it when it changes (0: off)")
    p.add_argument("--max-bytes", type=int, default=limits.max_bytes,
                   help=f"bytes per image (default {limits.max_bytes:,})")
    p.add_argument("--max-pixels", type=int, default=limits.max_pixels,
                   help=f"pixels per image (default {limits.max_pixels:,})")
    p.add_argument("--max-files", type=int, default=limits.max_files,
                   help=f"images per batch request (default {limits.max_files})")
    p.add_argument("--max-lines", type=int, default=max_lines,
                   help=f"text lines per image; more is refused with 422 before recognition (default {max_lines})")
    p.add_argument("--queue", type=int, default=ServeConfig.queue,
                   help=f"requests waiting for a worker; more answer 503 with Retry-After (default {ServeConfig.queue})")
    p.add_argument("--request-timeout", type=float, default=ServeConfig.request_timeout_s, metavar="SECONDS",
                   help="time per image, waiting included; then its recognition stops and it answers 503 "
                        f"(default {ServeConfig.request_timeout_s:g})")
    p.add_argument("--read-timeout", type=float, default=ServeConfig.read_timeout_s, metavar="SECONDS",
                   help="longest wait for a request's headers (the connection is closed) or between chunks of "
                        "its body (408); after it, a body must also average 16 KiB/s "
                        f"(default {ServeConfig.read_timeout_s:g})")
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                   help=f"open connections; more answer 503 (default {MAX_CONNECTIONS})")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this origin (repeatable); none by default")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info; requests are logged without images or file names)")
    p.set_defaults(run=run_serve)


def _listen_arguments(p: argparse.ArgumentParser) -> None:
    """Where to listen and the token: the same for `serve` and `fl dashboard`."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000); must be free")
    p.add_argument("--token", help=f"require this bearer token on /api (visible in `ps`: prefer --token-file or "
                                   f"${TOKEN_ENV})")
    p.add_argument("--token-file", type=Path, metavar="PATH",
                   help="read the bearer token from this file (its first line; keep it owner-only)")


def add_dashboard_parser(fl_sub: argparse._SubParsersAction) -> None:
    """`fedocr fl dashboard`: the dashboard alone, for an operator who serves no OCR."""
    p = fl_sub.add_parser("dashboard", help="serve the federation dashboard of a run store (no OCR model)",
                          description="Serve /dashboard and the read-only /api/runs endpoints over a run store, "
                                      "following running federations live. The OCR routes answer 503: use "
                                      "`fedocr serve --runs` to serve both.")
    p.add_argument("--store", type=Path, help="run store (default: $FEDOCR_RUNS/runs.db)")
    _listen_arguments(p)
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning)")
    p.set_defaults(run=run_dashboard)


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise CliError(f"--port must be between 1 and 65535, got {port}", EXIT_USAGE)


def _runs_store(path: Path | None) -> Path | None:
    """The run store as given; a missing one is a warning (a federation may create it later)."""
    if path is None:
        return None
    path = path.resolve()
    if not path.is_file():
        print(f"warning: {path} does not exist yet; the dashboard says so until a federation writes it",
              file=sys.stderr)
    return path


def run_dashboard(args: argparse.Namespace) -> int:
    _check_port(args.port)
    token = serve_token(args)
    from fedocr.federated.config import FlConfig

    store = _runs_store(args.store or FlConfig().store_path())
    sock = listen(args.host, args.port)
    import uvicorn

    from fedocr.serve.app import ServeConfig, create_app

    print(f"dashboard of {store} on http://{args.host}:{args.port}/dashboard", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(model=None, token=token, runs=store)),
                                           log_level=args.log_level))
    server.run(sockets=[sock])
    return 0


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


def serve_token(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token from --token-file, --token or $FEDOCR_TOKEN (None: an open server). A given
    but empty token is refused: it would silently mean an open server."""
    if args.token is not None and args.token_file is not None:
        raise CliError("give --token or --token-file, not both", EXIT_USAGE)
    if args.token_file is not None:
        try:
            text = args.token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--token-file {args.token_file}: cannot read ({getattr(exc, 'strerror', None) or exc})",
                           EXIT_INPUT) from None
        token, source = (text.splitlines() or [""])[0].strip(), f"--token-file {args.token_file}"
    elif args.token is not None:
        token, source = args.token.strip(), "--token"
    elif TOKEN_ENV in environ:
        token, source = environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if not token:
        raise CliError(f"{source}: the token is empty (that would be an open server; "
                       f"leave it out to serve without a token)", EXIT_USAGE)
    return token


def listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket now, so a busy or forbidden port is reported before "serving on"
    (and the port cannot be taken while the model loads). Exit 4: the place output goes is not usable."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"--host {host}: {exc.strerror}", EXIT_USAGE) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts need no wait
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OutputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run_serve(args: argparse.Namespace) -> int:
    for name in ("processes", "workers", "port", "max_bytes", "max_pixels", "max_files", "max_lines", "max_connections"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1", 2)
    if args.queue < 0:
        raise CliError("--queue must be 0 or more", EXIT_USAGE)
    positive(args.request_timeout, "--request-timeout")
    positive(args.read_timeout, "--read-timeout")
    _check_port(args.port)
    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1", EXIT_USAGE)
    if args.cache < 0:
        raise CliError("--cache must be 0 (off) or more", EXIT_USAGE)
    positive(args.watch, "--watch", zero_ok=True)
    token = serve_token(args)
    model = args.model or default_model()
    sock = listen(args.host, args.port)
    import uvicorn

    from fedocr.serve.app import ServeConfig, create_app
    from fedocr.serve.connections import header_deadline
    from fedocr.serve.hotswap import ModelSlot
    from fedocr.serve.images import Limits
    from fedocr.serve.memory import tune_malloc

    base = Limits()
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_files=args.max_files,
                    max_batch_bytes=max(base.max_batch_bytes, args.max_bytes))
    config = ServeConfig(model=model, token=token, limits=limits, cache_size=args.cache, workers=args.workers,
                         threads=args.threads, watch_s=args.watch, cors_origins=tuple(args.cors_origin),
                         max_lines=args.max_lines, runs=_runs_store(args.runs), trust=args.trust, queue=args.queue,
                         request_timeout_s=args.request_timeout, read_timeout_s=args.read_timeout)
    tune_malloc()                            # a long-running server must not creep up in memory
    slot = ModelSlot(config.model, config.threads, trust=args.trust)  # load before serving: a bad model fails fast
    info = slot.engine.info
    print(f"serving {info.path} ({info.backend}, {info.quantization}, version {info.version}) "
          f"on http://{args.host}:{args.port}/" + (" (dashboard: /dashboard)" if config.runs else "")
          + (f" with {args.processes} processes" if args.processes > 1 else ""), file=sys.stderr, flush=True)
    options = {"log_level": args.log_level, "limit_concurrency": args.max_connections}
    if args.processes > 1:
        from fedocr.serve.processes import serve_processes

        del slot, info                               # each process loads its own
        serve_processes(config, sock, args.processes, **options)
        return 0
    server = uvicorn.Server(uvicorn.Config(create_app(config, slot), http=header_deadline(args.read_timeout),
                                           **options))
    server.run(sockets=[sock])
    return 0
