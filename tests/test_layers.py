"""The parts import one way (docs/ARCHITECTURE.md): a part imports only itself and the parts
before it in pyproject.toml's `[tool.fedocr] layers`."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fedocr"


def _part(module: str) -> str | None:
    """`fedocr.model.crnn` -> `model`; None outside fedocr or for the package root."""
    pieces = module.split(".")
    return pieces[1] if pieces[0] == "fedocr" and len(pieces) > 1 else None


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join(base + [node.module] if node.module else base)))
    return found


def test_parts_import_only_the_parts_before_them() -> None:
    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["fedocr"]["layers"]
    backward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(p for p in path.relative_to(PACKAGE.parent).with_suffix("").parts if p != "__init__")
        own = _part(module)
        for line, target in _imports(path, module):
            other = _part(target)
            if own in layers and other in layers and layers.index(other) > layers.index(own):
                backward.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {target}")
    assert backward == []
