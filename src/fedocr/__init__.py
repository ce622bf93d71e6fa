"""fedocr: privacy-preserving Chinese + English OCR."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_attributes(package: str, modules: dict[str, str]) -> Callable[[str], Any]:
    """A package's module-level `__getattr__` that imports each name in `modules` from its module
    on first use: what needs torch is loaded by those who use it, so reading with ONNX Runtime
    (the server, `fedocr ocr`) never pays torch's import (2 s and 185 MB)."""
    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(modules[name]), name)

    return __getattr__
