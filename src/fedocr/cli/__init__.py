"""The `fedocr` command. Each sub-command group lives in its own module and registers itself."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedocr import __version__
from fedocr.cli import federated, recognizer, serving
from fedocr.cli.common import EXIT_INPUT, EXIT_OUTPUT, LazyParser, report_error

GROUPS = [recognizer, serving, federated]


def build_parser() -> argparse.ArgumentParser:
    parser = LazyParser(
        prog="fedocr", description="Privacy-preserving Chinese + English OCR: train, federate, serve.",
        epilog=f"exit codes: 0 ok, 2 usage, {EXIT_INPUT} bad input, {EXIT_OUTPUT} output not writable, 1 other failure")
    parser.add_argument("--version", action="version", version=f"fedocr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("fedocr: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure ends as one line and a documented exit code
        code = report_error(exc)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
