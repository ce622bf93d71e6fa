"""The federation's one vocabulary (DESIGN.md: fixed by the server with the initial model)."""
from __future__ import annotations

from pathlib import Path

from fedocr.charset import Charset
from fedocr.federated.config import FlConfig
from fedocr.federated.orgs import named_charset
from fedocr.model import CRNN, ModelConfig, load_checkpoint


def initial_model(cfg: FlConfig) -> tuple[CRNN, Charset, str]:
    """(model, charset, description) the federation starts from: a checkpoint or a fresh CRNN."""
    path = cfg.initial_model_path()
    if path is not None:
        ckpt = load_checkpoint(path)
        return ckpt.model, ckpt.charset, str(path)
    charset = named_charset(cfg.charset)
    import torch

    torch.manual_seed(cfg.seed)  # a fresh model's init is part of the run's seeded provenance
    return CRNN(ModelConfig(len(charset), cfg.model_size)), charset, f"scratch ({cfg.model_size}, {cfg.charset} charset)"


def expected_charset(cfg: FlConfig) -> Charset:
    """The vocabulary a client expects: the initial model's when that file exists here, else
    the run config's named vocabulary. A client whose expectation differs from the server's
    refuses to train rather than encode its labels against the wrong classes."""
    path = cfg.initial_model_path()
    if path is not None and Path(path).is_file():
        return load_checkpoint(path).charset
    return named_charset(cfg.charset)
