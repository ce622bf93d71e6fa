"""Shared fixtures: a small vocabulary, and a tiny CRNN trained once per test session."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedocr.charset import Charset
from fedocr.data import EncodedLines, InMemoryLines, SyntheticLines
from fedocr.model import CRNN, ModelConfig, save_checkpoint
from fedocr.train import TrainConfig, Trainer

SMALL_ALPHABET = "0123456789中国人民银行金额日期医院学校"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("FEDOCR_CACHE", str(tmp_path_factory.mktemp("cache")))
    # One thread per pytest-xdist worker, and for the processes its tests start: two workers with
    # two spinning threads each on two cores made the digits model's training 6x slower.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


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
    """A tiny CRNN trained from scratch on digits + 12 hanzi (about 80 s on 2 cores; held-out CER
    0.5-1.3% over three seeds). The lines are rendered once: re-rendering each epoch cost a third."""
    torch.manual_seed(0)
    lines = InMemoryLines(SyntheticLines("digits", 3000, seed=1, charset=small_charset))
    train = EncodedLines(lines, small_charset)
    model = CRNN(ModelConfig(len(small_charset), "tiny"))
    config = TrainConfig(max_steps=320, batch_size=32, lr=4e-3, warmup_steps=30, log_every=160)
    result = Trainer(model, small_charset, train, config, log=lambda _: None).fit()
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    save_checkpoint(path, model, small_charset, {"kind": "test"})
    model.eval()
    return TrainedModel(model, small_charset, path, result.seconds)




# Two pytest-xdist workers take whole files (`--dist loadfile`), except that these groups of files
# go to one worker each: the federation tests one after another (two Ray clusters at once on two
# cores only slow each other down), and the users of the digits model, so it is trained once.
FEDERATION_FILES = {"test_fl_deployment.py", "test_fl_simulation.py", "test_flwr_run.py"}
DIGITS_FILES = {"test_cli.py", "test_export.py", "test_model.py", "test_segment.py", "test_serve_api.py",
                "test_train.py", "test_web_page.py"}
GROUPS = {**dict.fromkeys(FEDERATION_FILES, "0-federation"), **dict.fromkeys(DIGITS_FILES, "1-digits")}


def _group(path: str) -> str:
    name = Path(path).name
    return GROUPS.get(name, name)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadfile` with the groups above (pytest-xdist's own `loadgroup` cannot rename node
    ids under pytest 9)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileGroups(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid.split("::", 1)[0])

    return FileGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    users = {item.path.name for item in items if "trained_digits_model" in getattr(item, "fixturenames", ())}
    if users - DIGITS_FILES:
        raise pytest.UsageError(f"add {', '.join(sorted(users - DIGITS_FILES))} to DIGITS_FILES in tests/conftest.py")
    # Stable: the long groups go out first (with --no-loadscope-reorder), files keep their order.
    items.sort(key=lambda item: _group(str(item.path)) if item.path.name in GROUPS else "2")
