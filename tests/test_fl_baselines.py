"""The baselines' in-process training shares the cores politely with Ray actors."""
from __future__ import annotations

from typing import Any

import pytest
import torch

import fedocr.federated.sim.baselines as baselines
from fedocr.federated.config import FlConfig
from fedocr.data.organisations import named_charset, public_lines


@pytest.mark.parametrize("ray_up", [True, False])
def test_baseline_training_uses_one_thread_beside_ray_actors(ray_up: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    class Trainer:
        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def fit(self) -> Any:
            seen.append(torch.get_num_threads())
            return type("Result", (), {"seconds": 0.0})()

    monkeypatch.setattr(baselines, "Trainer", Trainer)
    monkeypatch.setattr(baselines, "_ray_running", lambda: ray_up)
    charset = named_charset("mini")
    cfg = FlConfig(federation="three-orgs-mini", charset="mini", initial_model="scratch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        baselines._train(cfg, charset, public_lines("three-orgs-mini", 2, 0, charset.version, charset))
        assert seen == [1 if ray_up else 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
