"""Where the shipped base model is, for every part that starts from it (the CLI, the server,
the federation): $FEDOCR_MODEL, then the installed package's own copy (`fedocr/assets`, which a
wheel carries), then a source checkout's `models/` folder."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

ENV = "FEDOCR_MODEL"
CHECKOUT_MODELS = Path(__file__).resolve().parents[3] / "models"
NAMES = ("base.onnx", "base.pt")   # ONNX first: serving needs no torch


def shipped_folders() -> list[Path]:
    """The folders searched after $FEDOCR_MODEL, in order."""
    return [Path(str(resources.files("fedocr") / "assets")), CHECKOUT_MODELS]


def shipped_model(names: tuple[str, ...] = NAMES, use_env: bool = True) -> Path | None:
    """The first existing shipped model file among `names`, or None. $FEDOCR_MODEL, when set,
    is returned as it is (a missing file is then the caller's clear error, not a silent fallback)."""
    env = os.environ.get(ENV) if use_env else None
    if env:
        return Path(env)
    for folder in shipped_folders():
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def base_checkpoint() -> Path | None:
    """The base model as a PyTorch checkpoint (what a federation starts from and fine-tunes)."""
    env = os.environ.get(ENV)
    if env and env.endswith(".pt"):
        return Path(env)
    return shipped_model(("base.pt",), use_env=False)
