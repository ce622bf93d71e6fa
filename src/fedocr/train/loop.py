"""The one training loop: centralized pre-training, local-only baselines and each federated
client's local epochs all run through `Trainer`.

AdamW, CTC loss with zero_infinity, gradient-norm clipping, linear warm-up then cosine decay,
width-bucketed batches. With an output path the loop writes a resumable checkpoint (weights,
optimizer, schedule, step, data position, RNG, loss history) every `checkpoint_every_s`
seconds and at the end; `Trainer.resume` continues exactly where it stopped (on a GPU, dropout
and CTC's backward are not bit-reproducible, so a resumed GPU run matches only statistically).

With `time_budget_s`, the schedule's length is fixed once warm-up ends, from the speed measured
over the second half of warm-up (the first batches pay for starting the data workers): the
cosine then reaches its end when the budget does (a lease on a GPU machine).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from fedocr.charset import Charset
from fedocr.data import EncodedLines, LineDataset, WidthBucketSampler, collate
from fedocr.model import CRNN, load_checkpoint, save_checkpoint, torch_logits_fn
from fedocr.model.checkpoint import CheckpointError, atomic_write, provenance as make_provenance
from fedocr.train.config import TrainConfig
from fedocr.train.evaluate import evaluate

Logger = Callable[[str], None]

# Settings that may differ between the sittings of one run: they change speed or logging, not the schedule.
RUNTIME_KNOBS = {"bf16", "num_workers", "log_every", "eval_every", "checkpoint_every_s", "device"}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class FitResult:
    steps: int                 # steps run in this call
    lines: int                 # lines seen in this call
    mean_loss: float           # mean training loss over this call
    seconds: float
    val_cer: float | None = None


class Trainer:
    def __init__(self, model: CRNN, charset: Charset, data: EncodedLines, config: TrainConfig, *,
                 val: LineDataset | None = None, out: str | Path | None = None,
                 provenance: dict[str, Any] | None = None, log: Logger = _stderr,
                 history_file: str | Path | None = None, anchor: dict[str, torch.Tensor] | None = None) -> None:
        if len(data) == 0:
            raise ValueError("no usable training lines (all were empty or had unknown characters)")
        if len(charset) != model.config.num_classes:
            raise CheckpointError(f"model has {model.config.num_classes} classes, charset {len(charset)}")
        self.model, self.charset, self.data, self.config = model, charset, data, config
        self.val, self.out, self.log = val, Path(out) if out else None, log
        self.history_file = Path(history_file) if history_file else None
        self.provenance = provenance or {}
        self.device = torch.device(config.device)
        if config.prox_mu and anchor is None:
            raise ValueError("prox_mu needs the anchor weights the proximal term pulls towards")
        # The proximal term's centre, per trainable parameter (by name); a copy, so training cannot move it.
        self.anchor = ({name: anchor[name].detach().clone().to(self.device) for name, _ in model.named_parameters()}
                       if config.prox_mu else {})
        if config.dp_noise_multiplier:
            from fedocr.train import private as dp  # Opacus takes ~3 s to import: only when asked for
            dp.make_dp_trainable(model)  # before the optimizer: DPLSTM brings new parameter objects
            if config.dp_trainable:   # the rest stay as they arrived: no gradient, no noise
                for name, parameter in model.named_parameters():
                    parameter.requires_grad_(name.startswith(config.dp_trainable))
        model.to(self.device)  # before the optimizer, whose state then lives on the same device
        trained = [p for p in model.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                trained, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
        # The module batches run through: the model, or its per-sample-gradient wrapper under DP-SGD.
        self.net: torch.nn.Module = model
        if config.dp_noise_multiplier:
            self.net, self.optimizer = dp.private(model, self.optimizer, config.batch_size,
                                                  dp.DpSgd(config.dp_noise_multiplier, config.dp_max_grad_norm))
        self.batches_per_epoch = math.ceil(len(data) / config.batch_size)
        self.total_steps = config.total_steps(self.batches_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = self.epoch = self.batch_in_epoch = self.lines_seen = 0
        self.history: list[dict[str, float]] = []
        self.best_cer: float | None = None
        self.budget_fixed = config.time_budget_s is None
        self._speed_mark: tuple[int, float] | None = None  # (step, time) where the speed is measured from
        torch.manual_seed(config.seed)

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, self.total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    # -- resumable state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "lines_seen": self.lines_seen, "history": self.history, "best_cer": self.best_cer,
                "config": self.config.to_dict(), "total_steps": self.total_steps,
                "torch_rng": torch.get_rng_state(), "data_fingerprint": self.data.fingerprint,
                "budget_fixed": self.budget_fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("data_fingerprint")
        if saved is not None and saved != self.data.fingerprint:
            raise CheckpointError(f"the run was trained on other data (fingerprint {saved}, now "
                                  f"{self.data.fingerprint}): give the same --data, or --restart")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.lines_seen, self.history = state["lines_seen"], list(state["history"])
        self.best_cer = state.get("best_cer")
        self.total_steps = state.get("total_steps", self.total_steps)
        self.budget_fixed = state.get("budget_fixed", True)
        torch.set_rng_state(state["torch_rng"])

    @classmethod
    def resume(cls, path: str | Path, charset: Charset, data: EncodedLines, runtime: dict[str, Any] | None = None,
               **kwargs: Any) -> "Trainer":
        """Continue the run saved at `path` with the config it was started with; `runtime` may
        change the knobs that do not alter the schedule (RUNTIME_KNOBS), e.g. bf16 or workers."""
        ckpt = load_checkpoint(path, expect_charset=charset)
        if not ckpt.training:
            raise CheckpointError(f"{path}: holds no training state to resume (a shipped or exported model?)")
        changes = runtime or {}
        unknown = set(changes) - RUNTIME_KNOBS
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))} when resuming")
        config = dataclasses.replace(TrainConfig(**ckpt.training["config"]), **changes)
        trainer = cls(ckpt.model, charset, data, config, provenance=ckpt.provenance, out=path, **kwargs)
        trainer.load_state_dict(ckpt.training)
        if trainer.history_file:  # drop points logged after the checkpoint; they will be logged again
            atomic_write(trainer.history_file, lambda tmp: tmp.write_text(
                "".join(json.dumps(p) + "\n" for p in trainer.history), encoding="utf-8"))
        return trainer

    def save(self, path: str | Path | None = None, training_state: bool = True) -> None:
        target = Path(path) if path else self.out
        if target is None:
            return
        prov = {**self.provenance, **make_provenance(steps=self.step, lines_seen=self.lines_seen)}
        save_checkpoint(target, self.model, self.charset, prov, self.state_dict() if training_state else None)

    # -- the loop ----------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        sampler: Sampler[list[int]]
        if self.config.dp_noise_multiplier:  # DP-SGD's accounting assumes Poisson sampling
            from fedocr.train.private import PoissonBatches

            sampler = PoissonBatches(len(self.data), self.sample_rate, self.batches_per_epoch - self.batch_in_epoch)
        else:
            sampler = WidthBucketSampler(self.data.label_lengths, self.config.batch_size, self.config.seed,
                                         epoch=self.epoch, start_batch=self.batch_in_epoch, bucket=self.config.bucket)
        # Its own generator: a DataLoader draws a base seed from the global RNG when iterated,
        # which would shift dropout's random stream after a resume.
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + self.epoch)
        return DataLoader(self.data, batch_sampler=sampler, collate_fn=collate, generator=generator,
                          num_workers=self.config.num_workers, persistent_workers=False,
                          pin_memory=self.device.type == "cuda")

    @property
    def sample_rate(self) -> float:
        """A line's chance to be in a batch (DP-SGD's q)."""
        return min(1.0, self.config.batch_size / len(self.data))

    def _train_step(self, batch: dict[str, Any]) -> float:
        self.model.train()
        images, widths, targets, target_lengths = (batch[k].to(self.device, non_blocking=True) for k in
                                                   ("images", "widths", "targets", "target_lengths"))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            logits = self.net(images, widths)
        loss = self.model.ctc_loss(logits, widths, targets, target_lengths)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self._proximal()).backward()
        if not self.config.dp_noise_multiplier:  # DP-SGD clips each line's gradient instead
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def _proximal(self) -> torch.Tensor | float:
        """mu/2 * ||w - anchor||^2 over the trainable parameters (0 without an anchor)."""
        if not self.anchor:
            return 0.0
        return self.config.prox_mu / 2 * sum(((p - self.anchor[name]) ** 2).sum()
                                             for name, p in self.model.named_parameters())

    def validate(self) -> float | None:
        if self.val is None:
            return None
        report = evaluate(torch_logits_fn(self.model), self.charset, self.val)
        self.model.train()
        return report.cer

    def fit(self, until_step: int | None = None) -> FitResult:
        """Train to the end of the schedule (or to `until_step`), then save and return a summary."""
        stop = self._stop(until_step)
        started, last_save = time.time(), time.time()
        steps0, lines0 = self.step, self.lines_seen
        losses: list[float] = []
        window: list[float] = []
        bar = _progress(stop - self.step)
        val_cer: float | None = None
        try:
            val_cer = self._run(until_step, bar, losses, window, started, lines0, last_save)
        except BaseException:
            if self.out and self.step > steps0:
                self.save()  # an interrupted or failed sitting keeps its progress
            raise
        finally:
            if bar:
                bar.close()
        self.save()
        steps = self.step - steps0
        return FitResult(steps=steps, lines=self.lines_seen - lines0,
                         mean_loss=sum(losses) / len(losses) if losses else float("nan"),
                         seconds=time.time() - started, val_cer=val_cer)

    def _stop(self, until_step: int | None) -> int:
        end = self.total_steps if self.budget_fixed else sys.maxsize  # until fixed, the budget decides
        return end if until_step is None else min(until_step, end)

    def _run(self, until_step: int | None, bar: Any, losses: list[float], window: list[float], started: float,
             lines0: int, last_save: float) -> float | None:
        val_cer: float | None = None
        stop, steps0 = self._stop(until_step), self.step
        while self.step < stop:
            for batch in self._loader():
                loss = self._train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                self.lines_seen += len(batch["texts"])
                losses.append(loss)
                window.append(loss)
                if not self.budget_fixed:  # the budget may lengthen or shorten the schedule
                    self._fit_schedule_to_budget(started, steps0)
                    stop = self._stop(until_step)
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
                cfg = self.config
                val_cer = None
                evaluate_now = cfg.eval_every and self.step % cfg.eval_every == 0
                if self.step % cfg.log_every == 0 or evaluate_now or self.step == stop:
                    val_cer = self.validate() if (evaluate_now or self.step == self.total_steps) else None
                    self._record(window, val_cer, started, lines0)
                    window = []
                if self.out and time.time() - last_save > self.config.checkpoint_every_s:
                    self.save()
                    last_save = time.time()
                if self.step >= stop:
                    break
            else:  # the epoch ended
                self.epoch += 1
                self.batch_in_epoch = 0
        return val_cer

    def _fit_schedule_to_budget(self, started: float, steps0: int) -> None:
        """Measure the speed from mid-warm-up; at the end of warm-up, fix the schedule's length
        (it replaces max_steps/epochs: the budget decides)."""
        measure_from, fix_at = steps0 + max(self.config.warmup_steps // 2, 10), steps0 + max(self.config.warmup_steps, 20)
        if self.step == measure_from:
            self._speed_mark = (self.step, time.time())
        if self.step < fix_at:
            return
        mark_step, mark_time = self._speed_mark or (steps0, started)
        now = time.time()
        rate = (self.step - mark_step) / max(now - mark_time, 1e-9)
        budget = self.config.time_budget_s or 0.0
        self.total_steps = self.step + max(1, int(rate * (budget - (now - started))))
        self.budget_fixed = True
        self.log(f"time budget {budget:.0f} s at {rate:.2f} steps/s: the schedule ends at step {self.total_steps}")

    def _record(self, window: list[float], val_cer: float | None, started: float, lines0: int) -> None:
        point = {"step": self.step, "lines_seen": self.lines_seen, "epoch": self.epoch,
                 "train_loss": sum(window) / max(len(window), 1), "lr": self.scheduler.get_last_lr()[0],
                 "lines_per_s": (self.lines_seen - lines0) / max(time.time() - started, 1e-9)}
        if val_cer is not None:
            point["val_cer"] = val_cer
            if self.best_cer is None or val_cer < self.best_cer:
                self.best_cer = val_cer
                if self.out:
                    self.save(self.out.with_suffix(".best.pt"), training_state=False)
        self.history.append(point)
        if self.history_file:
            with self.history_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(point) + "\n")
        message = (f"step {self.step}/{self.total_steps} epoch {self.epoch} loss {point['train_loss']:.4f} "
                   f"lr {point['lr']:.2e} {point['lines_per_s']:.0f} lines/s")
        if val_cer is not None:
            message += f" val_cer {val_cer:.4f}"
        self.log(message)


def _progress(total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", leave=False)
