"""The client's expected vocabulary in a deployment: the initial model may live on the server only."""
from __future__ import annotations

from pathlib import Path

import pytest

import fedocr.federated.vocab as vocab
from fedocr.federated.config import FlConfig
from fedocr.data.organisations import named_charset
from fedocr.model import CRNN, ModelConfig, save_checkpoint
from fedocr.model.checkpoint import provenance


def test_client_falls_back_to_the_named_charset_when_the_initial_model_is_only_on_the_server(tmp_path: Path) -> None:
    cfg = FlConfig(initial_model=str(tmp_path / "server-only.pt"), charset="mini")
    assert vocab.expected_charset(cfg).version == named_charset("mini").version


def test_client_reads_the_initial_models_charset_once_per_process(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    charset = named_charset("mini")
    path = tmp_path / "init.pt"
    save_checkpoint(path, CRNN(ModelConfig(len(charset), "tiny")), charset, provenance(kind="test"))
    loads: list[str] = []
    real = vocab.load_checkpoint
    monkeypatch.setattr(vocab, "load_checkpoint", lambda p: loads.append(str(p)) or real(p))
    cfg = FlConfig(initial_model=str(path), charset="default")
    assert vocab.expected_charset(cfg).version == charset.version
    assert vocab.expected_charset(cfg).version == charset.version
    assert loads == [str(path)]


def test_auto_start_and_local_rate_follow_the_starting_point(monkeypatch, tmp_path) -> None:
    from fedocr.federated import config

    base = tmp_path / "base.pt"
    base.write_bytes(b"stand-in: only its existence matters here")
    monkeypatch.setenv("FEDOCR_MODEL", str(base))
    from_base = config.FlConfig(federation="three-orgs", initial_model="auto")
    mini = config.FlConfig(federation="three-orgs-mini", charset="mini", initial_model="auto")
    assert from_base.initial_model_path() == base and from_base.local_lr() == config.FINETUNE_LR
    assert mini.initial_model_path() is None and mini.local_lr() == config.SCRATCH_LR
    assert config.FlConfig(initial_model="scratch", lr=0.02).local_lr() == 0.02
    # SGD at AdamW's fine-tuning rate would barely move: each optimizer has its own pair
    sgd_from_base = config.FlConfig(federation="three-orgs", initial_model="auto", client_optimizer="sgd")
    assert sgd_from_base.local_lr() == config.SGD_FINETUNE_LR >= 100 * config.FINETUNE_LR
    assert config.FlConfig(initial_model="scratch", client_optimizer="sgd").local_lr() == config.SGD_SCRATCH_LR
    base.unlink()
    assert from_base.initial_model_path() is None and from_base.local_lr() == config.SCRATCH_LR


def test_clients_train_at_the_rate_the_server_resolved() -> None:
    from fedocr.federated.config import local_train_config
    from fedocr.federated.config import FINETUNE_LR

    on_server_only = FlConfig(initial_model="/nowhere/server-only.pt")  # exists on the server alone
    assert on_server_only.local_lr() == FINETUNE_LR                     # no error on the client
    assert local_train_config(on_server_only, 64, 1, lr=5e-5).lr == 5e-5
    assert local_train_config(on_server_only, 64, 1, lr=None).lr == FINETUNE_LR


def test_cosine_lr_decay_lowers_the_local_rate_over_rounds_and_the_baselines_follow() -> None:
    from fedocr.federated.sim.baselines import baseline_train_config
    from fedocr.federated.config import MIN_LR_RATIO, ConfigError

    cfg = FlConfig(initial_model="scratch", lr=1e-3, num_rounds=5, lr_decay="cosine")
    rates = [cfg.round_lr(r) for r in range(1, 6)]
    assert rates[0] == 1e-3 and 1e-3 * MIN_LR_RATIO < rates[-1] < 0.15 * 1e-3  # the last round still learns
    assert all(a > b for a, b in zip(rates, rates[1:]))                     # strictly decreasing
    assert cfg.round_lr(9) == 1e-3 * MIN_LR_RATIO                           # rounds beyond the plan: the floor
    one_round = FlConfig(initial_model="scratch", lr=1e-3, num_rounds=1, lr_decay="cosine")
    assert one_round.round_lr(1) == 1e-3 and baseline_train_config(one_round, 64).schedule == "constant"
    assert FlConfig(initial_model="scratch", lr=1e-3, num_rounds=5, lr_decay="none").round_lr(5) == 1e-3
    baseline = baseline_train_config(cfg, n_lines=64)
    assert baseline.schedule == "cosine" and baseline.min_lr_ratio == MIN_LR_RATIO and baseline.lr == 1e-3
    with pytest.raises(ConfigError, match="lr-decay"):
        FlConfig(lr_decay="linear")
