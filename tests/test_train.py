import sys
from pathlib import Path

import pytest
import torch

from fedocr.data import EncodedLines, SyntheticLines
from fedocr.model import CRNN, ModelConfig, load_checkpoint, torch_logits_fn
from fedocr.train import TrainConfig, Trainer, evaluate, score

sys.path.insert(0, str(Path(__file__).parent))
from digits_model import train_digits  # noqa: E402


def test_score_is_edit_distance_over_reference_length():
    s = score([("金额12", "金额123"), ("abc", "abc"), ("", "xy")])
    assert s.errors == 3 and s.chars == 10 and s.cer == pytest.approx(0.3)
    assert s.line_accuracy == pytest.approx(1 / 3) and s.n == 3


@pytest.mark.slow
def test_crnn_learns_digits_and_hanzi_from_scratch(small_charset):
    """A shorter schedule than the committed model's (small batches leave CTC's all-blank plateau
    in fewer lines): held-out CER 5-9% and line accuracy 0.60-0.73 over seeds 0-2."""
    model, seconds = train_digits(small_charset, lines=2000, steps=400, batch_size=8)
    held_out = SyntheticLines("digits", 300, seed=99, charset=small_charset)
    report = evaluate(torch_logits_fn(model), small_charset, held_out)
    print(f"held-out CER {report.cer:.4f}, line accuracy {report.line_accuracy:.3f}, trained in {seconds:.0f} s")
    assert report.cer < 0.2
    assert report.line_accuracy > 0.4
    assert set(report.by_length) <= {"1-5", "6-20"}


def test_the_committed_digits_model_reads_held_out_lines(trained_digits_model, small_charset):
    """What the recognizer tests rely on: tests/digits_model.py's recipe, CER 0.5% when made."""
    held_out = SyntheticLines("digits", 300, seed=99, charset=small_charset)
    report = evaluate(torch_logits_fn(trained_digits_model.model), small_charset, held_out)
    assert report.cer < 0.03 and report.line_accuracy > 0.9


def _trainer(charset, out=None, seed=3):
    torch.manual_seed(seed)
    data = EncodedLines(SyntheticLines("digits", 96, seed=7, charset=charset), charset)
    config = TrainConfig(max_steps=8, batch_size=16, lr=2e-3, warmup_steps=2, log_every=1, seed=seed,
                         checkpoint_every_s=1e9)
    return Trainer(CRNN(ModelConfig(len(charset), "tiny")), charset, data, config, out=out, log=lambda _: None), data


def test_resumed_training_continues_the_same_step_and_loss_curve(tmp_path, small_charset):
    straight, _ = _trainer(small_charset)
    straight.fit()
    straight_losses = [p["train_loss"] for p in straight.history]

    interrupted, data = _trainer(small_charset, out=tmp_path / "run.pt")
    interrupted.fit(until_step=5)              # epoch 0 has 6 batches: stop mid-epoch
    resumed = Trainer.resume(tmp_path / "run.pt", small_charset, data, log=lambda _: None)
    assert resumed.step == 5 and resumed.batch_in_epoch == 5
    resumed.fit()
    assert resumed.step == 8
    assert [p["step"] for p in resumed.history] == list(range(1, 9))
    assert [p["train_loss"] for p in resumed.history] == pytest.approx(straight_losses, rel=1e-4)
    final = load_checkpoint(tmp_path / "run.pt")
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(final.model.state_dict()[name], value, rtol=1e-4, atol=1e-5)


def test_checkpoint_without_training_state_cannot_be_resumed(tmp_path, small_charset, trained_digits_model):
    data = EncodedLines(SyntheticLines("digits", 16, seed=1, charset=small_charset), small_charset)
    with pytest.raises(ValueError, match="no training state"):
        Trainer.resume(trained_digits_model.path, small_charset, data)


def test_resuming_with_other_data_is_refused(tmp_path, small_charset):
    trainer, _ = _trainer(small_charset, out=tmp_path / "run.pt")
    trainer.fit(until_step=2)
    other = EncodedLines(SyntheticLines("digits", 96, seed=8, charset=small_charset), small_charset)
    with pytest.raises(ValueError, match="other data"):
        Trainer.resume(tmp_path / "run.pt", small_charset, other, log=lambda _: None)


def test_a_sitting_that_fails_keeps_its_progress(tmp_path, small_charset):
    class Flaky(SyntheticLines):
        def __getitem__(self, index):
            if index == 50:
                raise RuntimeError("disk went away")
            return super().__getitem__(index)

    torch.manual_seed(0)
    data = EncodedLines(Flaky("digits", 96, seed=7, charset=small_charset), small_charset)
    config = TrainConfig(max_steps=20, batch_size=8, lr=1e-3, warmup_steps=1, bucket=False, checkpoint_every_s=1e9)
    trainer = Trainer(CRNN(ModelConfig(len(small_charset), "tiny")), small_charset, data, config,
                      out=tmp_path / "run.pt", log=lambda _: None)
    with pytest.raises(RuntimeError, match="disk went away"):
        trainer.fit()
    saved = load_checkpoint(tmp_path / "run.pt")
    assert saved.training["step"] == trainer.step > 0


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(lr=0), dict(log_every=0), dict(grad_clip=0), dict(seed=-1)])
def test_train_config_refuses_impossible_settings(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


@pytest.mark.parametrize("max_steps", [8, 100_000])  # the budget lengthens or shortens the schedule
def test_time_budget_fixes_the_schedule_after_warm_up_from_the_measured_speed(small_charset, monkeypatch, max_steps):
    import types

    from fedocr.train import loop

    now = [0.0]  # a fake clock in which every training step takes 50 ms
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: now[0]))
    step = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", lambda self, batch: (now.__setitem__(0, now[0] + 0.05), step(self, batch))[1])
    torch.manual_seed(0)
    data = EncodedLines(SyntheticLines("digits", 64, seed=7, charset=small_charset), small_charset)
    config = TrainConfig(max_steps=max_steps, batch_size=16, warmup_steps=20, time_budget_s=2.0, checkpoint_every_s=1e9)
    messages: list[str] = []
    trainer = Trainer(CRNN(ModelConfig(len(small_charset), "tiny")), small_charset, data, config, log=messages.append)
    trainer.fit()
    assert any("time budget" in m for m in messages)
    # measured 20 steps/s over steps 10-20; 1 s of the budget left at step 20: 20 more steps
    assert 38 <= trainer.total_steps <= 41 and trainer.step == trainer.total_steps
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(config.lr * config.min_lr_ratio, rel=0.05)
    assert trainer.history[-1]["step"] == trainer.total_steps


def test_unknown_training_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
