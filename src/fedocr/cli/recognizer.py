"""`fedocr synth | train | eval | ocr`: the recognizer's commands."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedocr.cli import ocr
from fedocr.cli.common import (EXIT_USAGE, CliError, OutputError, check_beam, check_writable_file, default_model,
                               lazy_parser, positive, print_json)

if TYPE_CHECKING:  # torch and the data readers are imported when a command runs, not for `--help`
    from fedocr.data import LineDataset
    from fedocr.train import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    lazy_parser(sub, "synth", _synth_arguments, help="render labelled synthetic lines of a preset",
                description="Render N labelled lines: OUT/images/*.png and OUT/labels.tsv.")
    lazy_parser(sub, "train", _train_arguments, help="train a CRNN (centralized or local-only); resumable",
                description="Train on one or more data sets. If OUT exists with training state, "
                            "training resumes from it with its own schedule (use --restart to start over); "
                            "--bf16, --workers, --eval-every and --checkpoint-every apply to the resumed sitting.")

    p = sub.add_parser("eval", help="CER, line accuracy, n and ms/line of a model on data sets")
    p.add_argument("--model", type=Path, help="checkpoint (.pt); default: the shipped model")
    p.add_argument("--data", required=True, help="data set(s), comma-separated")
    p.add_argument("--beam", type=int, default=0, help="beam width (0: greedy)")
    p.add_argument("--limit", type=int, help="evaluate at most this many lines per data set")
    p.add_argument("--single-pass", action="store_true",
                   help="read each line once (the service reads lines set off the model's density twice)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_eval)

    lazy_parser(sub, "ocr", ocr.add_arguments, help="recognise text in images, PDFs, folders or stdin",
                description="Recognise each image (or PDF page) in turn. One that cannot be read (or has more "
                            "lines than --max-lines) gets a one-line error and the others still get their "
                            "results; the exit code is then 3.")


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    from fedocr.data import PRESETS
    from fedocr.data.devices import DEVICES

    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="domain preset")
    p.add_argument("--n", type=int, required=True, help="number of lines")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the texts and images (default 0)")
    p.add_argument("--held-out-fonts", action="store_true", help="render only with the font family kept out of training")
    p.add_argument("--device", choices=sorted(DEVICES),
                   help="pass every line through an organisation's printer or scanner (the federation presets' private look)")
    p.set_defaults(run=run_synth)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from fedocr.model.config import SIZES

    p.add_argument("--data", required=True, help="data set(s), comma-separated: folders with labels.tsv, LMDB folders, "
                                                  "label files, or synth:PRESET[:N[:SEED]] to render lines on the fly")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (and resume from)")
    p.add_argument("--val", help="validation data set(s), comma-separated")
    p.add_argument("--size", default="small", choices=sorted(SIZES), help="model size (default small)")
    p.add_argument("--norm", default="batch", choices=["batch", "group"], help="group for DP-SGD later")
    p.add_argument("--init", type=Path, help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--epochs", type=float, default=10.0, help="passes over the data (default 10)")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32, help="lines per optimizer step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order (default 0)")
    p.add_argument("--workers", type=int, default=0, help="data loading processes")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on AMX CPUs and GPUs)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where training runs")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="fit the LR schedule to this much training time (measured after warm-up)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (default 100)")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0: at the end)")
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between resumable checkpoints")
    p.add_argument("--history", type=Path, help="append the training curve (JSON Lines) to this file")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--restart", action="store_true", help="ignore an existing OUT and start over")
    p.set_defaults(run=run_train)


SYNTH_PREFIX = "synth:"


def _synthetic(spec: str) -> LineDataset:
    """`synth:PRESET[:N[:SEED]]` -> lines rendered on the fly (N defaults to 10,000)."""
    from fedocr.data import SyntheticLines, UnknownPreset

    parts = spec[len(SYNTH_PREFIX):].split(":")
    try:
        n = int(parts[1]) if len(parts) > 1 else 10_000
        seed = int(parts[2]) if len(parts) > 2 else 0
        if n < 1 or seed < 0:
            raise ValueError
        return SyntheticLines(parts[0], n, seed=seed)
    except (ValueError, UnknownPreset) as exc:
        reason = str(exc) or "N must be >= 1 and SEED >= 0"
        raise CliError(f"bad synthetic data spec {spec!r}: {reason}; expected synth:PRESET[:N[:SEED]]", 2) from None


def _datasets(spec: str) -> list[LineDataset]:
    """Comma-separated data sets: paths, or synth:PRESET[:N[:SEED]] for rendered lines."""
    from fedocr.data import open_dataset

    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise CliError("no data set given")
    return [_synthetic(s) if s.startswith(SYNTH_PREFIX) else open_dataset(Path(s)) for s in items]


def run_synth(args: argparse.Namespace) -> int:
    from fedocr.data import DatasetError, SyntheticLines, get_preset, write_line_set
    from fedocr.data.presets import with_device

    if args.n < 1:
        raise CliError("--n must be at least 1", 2)
    preset = with_device(get_preset(args.preset), args.device) if args.device else get_preset(args.preset)
    lines = SyntheticLines(preset, args.n, seed=args.seed, held_out_fonts=args.held_out_fonts)
    from tqdm import tqdm

    with tqdm(total=args.n, unit="line", disable=not sys.stderr.isatty()) as bar:
        try:
            count = write_line_set(args.out, (lines[i] for i in range(args.n)), progress=bar.update)
        except DatasetError as exc:
            raise OutputError(str(exc)) from exc
    device = f" through a {args.device} device" if args.device else ""
    print(f"wrote {count} lines of preset {args.preset}{device} to {args.out}", file=sys.stderr)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The flags as a validated TrainConfig: an impossible setting is a usage error before any work."""
    from fedocr.train import TrainConfig

    positive(args.lr, "--lr")
    positive(args.epochs, "--epochs")
    positive(args.checkpoint_every, "--checkpoint-every")
    if args.time_budget is not None:
        positive(args.time_budget, "--time-budget")
    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1", EXIT_USAGE)
    try:
        return TrainConfig(epochs=args.epochs, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, num_workers=args.workers, bf16=args.bf16,
                           eval_every=args.eval_every, checkpoint_every_s=args.checkpoint_every,
                           device=args.device, time_budget_s=args.time_budget, warmup_steps=args.warmup)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def run_train(args: argparse.Namespace) -> int:
    config = _train_config(args)   # also on a resume: a bad flag is reported, not ignored
    out = check_writable_file(args.out)
    datasets = _datasets(args.data)   # a bad data set is a usage error before torch's import (3 s)
    val_sets = _datasets(args.val) if args.val else None
    import torch

    from fedocr.charset import default_charset
    from fedocr.data import ConcatLines, DatasetError, EncodedLines, InMemoryLines
    from fedocr.model import CRNN, ModelConfig, load_checkpoint
    from fedocr.model.checkpoint import provenance, remove_stale_temporaries
    from fedocr.train import Trainer

    if removed := remove_stale_temporaries(out):
        print(f"removed {removed} temporary file(s) an interrupted run left beside {out}", file=sys.stderr)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {args.device}: this PyTorch build sees no CUDA GPU; use --device cpu", 2)
    charset = default_charset()
    train_set = EncodedLines(ConcatLines(datasets), charset)
    if len(train_set) == 0:
        raise DatasetError(f"{args.data}: no usable training lines ({train_set.unknown.summary()}; "
                           f"{train_set.empty} empty)")
    if train_set.skipped:
        print(f"skipped {train_set.skipped} line(s): {train_set.unknown.summary()}; {train_set.empty} empty", file=sys.stderr)
    val = InMemoryLines(ConcatLines(val_sets)) if val_sets else None
    if args.threads:
        torch.set_num_threads(args.threads)
    if out.is_file() and not args.restart:
        runtime = {"bf16": args.bf16, "num_workers": args.workers, "eval_every": args.eval_every,
                   "checkpoint_every_s": args.checkpoint_every, "device": args.device}
        try:
            trainer = Trainer.resume(out, charset, train_set, runtime=runtime, val=val, history_file=args.history)
        except ValueError as exc:
            raise CliError(str(exc), 2) from None
        print(f"resuming {out} at step {trainer.step}/{trainer.total_steps}", file=sys.stderr)
    else:
        if args.init:
            model = load_checkpoint(args.init, expect_charset=charset).model
        else:
            torch.manual_seed(args.seed)  # --seed decides the initial weights too
            model = CRNN(ModelConfig(len(charset), args.size, args.norm))
        prov = provenance(kind="centralized", data=args.data.split(","),
                          seed=args.seed, init=str(args.init) if args.init else None)
        trainer = Trainer(model, charset, train_set, config, val=val, out=out, provenance=prov, history_file=args.history)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` (and CI timeouts) save a checkpoint like Ctrl-C does
    try:
        result = trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)   # an in-process caller (a test, a notebook) gets its own back
    summary = f"trained {result.steps} steps ({result.lines} lines) in {result.seconds:.0f} s, mean loss {result.mean_loss:.3f}"
    if result.val_cer is not None:
        summary += f", validation CER {result.val_cer:.4f}"
    print(f"{summary}; saved {out}", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    check_beam(args.beam)
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1", EXIT_USAGE)
    from fedocr.serve.engine import load_engine  # ONNX Runtime for .onnx (or a sibling .onnx), else PyTorch
    from fedocr.train import evaluate

    model_path = args.model or default_model()
    engine = load_engine(model_path)
    reports = [evaluate(engine.logits_fn, engine.charset, d, beam_width=args.beam, limit=args.limit,
                        reread=not args.single_pass)
               for d in _datasets(args.data)]
    if args.json:
        print_json({"model": str(model_path), "backend": engine.info.backend,
                    "datasets": [r.to_dict() for r in reports]})
    else:
        print(f"{'data set':<24} {'n':>6} {'CER':>8} {'line acc':>9} {'ms/line':>8}")
        for r in reports:
            print(f"{r.name:<24} {r.n:>6} {r.cer:>8.4f} {r.line_accuracy:>9.4f} {r.ms_per_line:>8.2f}")
    return 0
