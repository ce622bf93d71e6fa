"""Shared fixtures: a small vocabulary, and a tiny CRNN trained once per test session."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedocr.charset import Charset
from fedocr.data import EncodedLines, SyntheticLines
from fedocr.model import CRNN, ModelConfig, save_checkpoint
from fedocr.train import TrainConfig, Trainer

SMALL_ALPHABET = "0123456789中国人民银行金额日期医院学校"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("FEDOCR_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_charset() -> Charset:
    return Charset(list(SMALL_ALPHABET))


@dataclass
class TrainedModel:
    model: CRNN
    charset: Charset
    path: Path
    seconds: float


@pytest.fixture(scope="session")
def trained_digits_model(small_charset: Charset, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A tiny CRNN trained from scratch on digits + 12 hanzi (about a minute on 2 cores)."""
    torch.manual_seed(0)
    train = EncodedLines(SyntheticLines("digits", 4000, seed=1, charset=small_charset), small_charset)
    model = CRNN(ModelConfig(len(small_charset), "tiny"))
    config = TrainConfig(max_steps=450, batch_size=32, lr=3e-3, warmup_steps=30, log_every=150)
    result = Trainer(model, small_charset, train, config, log=lambda _: None).fit()
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    save_checkpoint(path, model, small_charset, {"kind": "test"})
    model.eval()
    return TrainedModel(model, small_charset, path, result.seconds)
