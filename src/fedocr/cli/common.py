"""What every sub-command shares: error classes and exit codes, model lookup, output helpers."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from fedocr.data import DatasetError, UnknownPreset
from fedocr.data.fonts import FontsMissing
from fedocr.model import CheckpointError

EXIT_FAILURE, EXIT_INPUT, EXIT_OUTPUT = 1, 3, 4



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
    if isinstance(exc, (DatasetError, CheckpointError, UnknownPreset, FileNotFoundError, IsADirectoryError)):
        return EXIT_INPUT
    if isinstance(exc, PermissionError):
        return EXIT_OUTPUT
    if isinstance(exc, FontsMissing):
        return EXIT_FAILURE
    return None


def default_model() -> Path:
    """--model's default: $FEDOCR_MODEL, else the shipped base model (package, then checkout)."""
    from fedocr.model.shipped import shipped_folders, shipped_model

    found = shipped_model()
    if found is None:
        where = " or ".join(str(f) for f in shipped_folders())
        raise CliError(f"no --model given and no shipped model in {where}; train one with `fedocr train`")
    return found


def check_writable_file(path: Path) -> Path:
    """Fail early (before hours of work) when an output file cannot be written."""
    parent = path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create output folder ({exc.strerror or exc})") from exc
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{parent}: output folder is not writable")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    return path


def print_json(obj: Any, stream: Any = None) -> None:
    print(json.dumps(obj, ensure_ascii=False), file=stream or sys.stdout, flush=True)
