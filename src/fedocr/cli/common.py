"""What every sub-command shares: error classes and exit codes, model lookup, output helpers,
and the lazily filled sub-command parser.

Light on purpose: `fedocr --help` and the checks of every option run before torch, OpenCV or
ONNX Runtime is imported (each sub-command imports what it needs when it runs)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_FAILURE, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT = 1, 2, 3, 4


class CliError(Exception):
    """A user-facing failure with its exit code."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


class OutputError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_OUTPUT)


def error_exit_code(exc: BaseException) -> int | None:
    """The exit code for an expected failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, CliError):
        return exc.code
    # Imported here: a usage error must not wait for torch (these modules are loaded by then anyway).
    from fedocr.data import DatasetError, UnknownPreset
    from fedocr.data.fonts import FontsMissing
    from fedocr.model import CheckpointError

    if isinstance(exc, (DatasetError, CheckpointError, UnknownPreset, FileNotFoundError, IsADirectoryError)):
        return EXIT_INPUT
    if isinstance(exc, PermissionError):
        return EXIT_OUTPUT
    if isinstance(exc, FontsMissing):
        return EXIT_FAILURE
    return None


def error_message(exc: BaseException) -> str:
    """The one line a user sees for `exc`."""
    lines = str(exc).strip().splitlines()
    # DataLoader workers re-raise as "Caught X in DataLoader worker ...": the cause is the last line
    return (lines[-1] if lines[0].startswith("Caught ") else lines[0]) if lines else type(exc).__name__


def report_error(exc: BaseException) -> int | None:
    """Print `fedocr: error: ...` for an expected failure and return its exit code; None for a bug."""
    code = error_exit_code(exc)
    if code is not None:
        print(f"fedocr: error: {error_message(exc)}", file=sys.stderr, flush=True)
    return code


def default_model() -> Path:
    """--model's default: $FEDOCR_MODEL, else the shipped base model (package, then checkout)."""
    from fedocr.model.shipped import shipped_folders, shipped_model

    found = shipped_model()
    if found is None:
        where = " or ".join(str(f) for f in shipped_folders())
        raise CliError(f"no --model given and no shipped model in {where}; train one with `fedocr train`")
    return found


def check_writable_file(path: Path) -> Path:
    """Fail early (before hours of work) when an output file cannot be written: a file is made and
    removed next to it, since permission bits say nothing for root or for /proc, /sys and read-only mounts."""
    parent = path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create output folder ({exc.strerror or exc})") from exc
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    check_writable_folder(parent, f".{path.name}.")
    return path


def check_writable_folder(folder: Path, prefix: str = ".fedocr.") -> Path:
    """Fail early when files cannot be made in `folder`: one is made and removed (permission bits
    say nothing for root or for /proc, /sys and read-only mounts)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=prefix, suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from exc
    return folder


def print_json(obj: Any, stream: Any = None) -> None:
    print(json.dumps(obj, ensure_ascii=False), file=stream or sys.stdout, flush=True)


def check_beam(beam: int) -> None:
    if beam < 0:
        raise CliError(f"--beam must be 0 (greedy) or a beam width >= 1, got {beam}", EXIT_USAGE)


def positive(value: float, flag: str, zero_ok: bool = False) -> None:
    """A number option must be finite and > 0 (>= 0 with `zero_ok`): a usage error before any work."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise CliError(f"{flag} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value:g}", EXIT_USAGE)


class LazyParser(argparse.ArgumentParser):
    """A parser whose arguments are added only when it is used (its command runs or its help is
    shown): their choices and defaults live in modules that import torch, which `fedocr --help` and
    the other commands need not pay for. Sub-parsers of a LazyParser are LazyParsers too."""

    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def _fill(self) -> None:
        if self.add_arguments is not None:
            add, self.add_arguments = self.add_arguments, None
            add(self)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        self._fill()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._fill()
        return super().format_help()


def lazy_parser(sub: argparse._SubParsersAction, name: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                **kwargs: Any) -> argparse.ArgumentParser:
    """`sub.add_parser(name, **kwargs)` whose arguments `add_arguments` adds when the command is used."""
    parser = sub.add_parser(name, **kwargs)
    parser.add_arguments = add_arguments  # type: ignore[attr-defined]
    return parser
