"""The federation's one vocabulary (docs/ARCHITECTURE.md: fixed by the server with the initial model)."""
from __future__ import annotations

import functools
from pathlib import Path

from fedocr.charset import Charset
from fedocr.federated.config import FlConfig
from fedocr.data.organisations import named_charset
from fedocr.model import CRNN, ModelConfig, load_checkpoint


def initial_model(cfg: FlConfig) -> tuple[CRNN, Charset, str]:
    """(model, charset, description) the federation starts from: a checkpoint or a fresh CRNN."""
    path = cfg.initial_model_path()
    if path is not None:
        ckpt = load_checkpoint(path)
        return ckpt.model, ckpt.charset, str(path)
    charset = named_charset(cfg.vocabulary())
    import torch

    torch.manual_seed(cfg.seed)  # a fresh model's init is part of the run's seeded provenance
    return CRNN(ModelConfig(len(charset), cfg.model_size)), charset, f"scratch ({cfg.model_size}, {cfg.vocabulary()} charset)"


def expected_charset(cfg: FlConfig) -> Charset:
    """The vocabulary a client expects: the initial model's when that file exists on this node,
    else the run config's named vocabulary. The client compares its version with the one the
    server sends, and refuses to train rather than encode its labels against the wrong classes.

    Never raises for an initial model that exists only on the server (the usual deployment), and
    reads a checkpoint once per process, not on every message.
    """
    path: Path | None = None
    if cfg.initial_model == "auto":
        path = cfg.initial_model_path()
    elif cfg.initial_model != "scratch":
        path = Path(cfg.initial_model).expanduser()
    if path is not None and path.is_absolute() and path.is_file():
        stat = path.stat()
        return _checkpoint_charset(str(path), stat.st_mtime_ns, stat.st_size)
    return named_charset(cfg.vocabulary())


@functools.lru_cache(maxsize=4)
def _checkpoint_charset(path: str, mtime_ns: int, size: int) -> Charset:
    """A checkpoint's vocabulary, cached per file version (mtime and size are part of the key)."""
    return load_checkpoint(path).charset
