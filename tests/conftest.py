"""Shared fixtures: a small vocabulary, and the committed tiny CRNN that reads it."""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedocr.charset import Charset
from fedocr.model import CRNN, CheckpointError, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from digits_model import ASSET, small_charset as _small_charset  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("FEDOCR_CACHE", str(tmp_path_factory.mktemp("cache")))
    # One thread per pytest-xdist worker, and for the processes its tests start: two workers with
    # two spinning threads each on two cores made training in tests 6x slower.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def small_charset() -> Charset:
    return _small_charset()


@dataclass
class TrainedModel:
    model: CRNN
    charset: Charset
    path: Path


@pytest.fixture(scope="session")
def trained_digits_model(small_charset: Charset, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The committed tiny CRNN trained on digits + 12 hanzi (tests/digits_model.py makes it again),
    as a copy: no test can change the committed file."""
    path = Path(shutil.copy(ASSET, tmp_path_factory.mktemp("model") / "digits.pt"))
    try:
        checkpoint = load_checkpoint(path, expect_charset=small_charset)
    except CheckpointError as exc:
        pytest.fail(f"{exc}: make it again with `.venv/bin/python tests/digits_model.py`")
    checkpoint.model.eval()
    return TrainedModel(checkpoint.model, small_charset, path)


# Two pytest-xdist workers take whole files (`--dist loadfile`), except that the federation tests
# go to one worker, one after another: two Ray clusters at once on two cores only slow each other down.
FEDERATION_FILES = {"test_fl_deployment.py", "test_fl_simulation.py", "test_flwr_run.py"}
GROUPS = dict.fromkeys(FEDERATION_FILES, "0-federation")


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
    # Stable: the long group goes out first (with --no-loadscope-reorder), files keep their order.
    items.sort(key=lambda item: _group(str(item.path)) if item.path.name in GROUPS else "2")
