"""Checkpoint format: weights + charset (with version hash) + model config + provenance.

A checkpoint is one `torch.save` file of plain types, loadable with `weights_only=True`, so
any command can rebuild the model from it alone. Optional `training` state (optimizer,
schedule, step, data position, loss history) makes training resumable. Files are written to
a temporary name and renamed, so a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedocr import __version__
from fedocr.charset import Charset

from fedocr.model.config import ModelConfig

if TYPE_CHECKING:  # torch when a checkpoint is read or written, not for CheckpointError or atomic_write
    from fedocr.model.crnn import CRNN

FORMAT = "fedocr-crnn/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not one of ours, corrupt, or of another vocabulary/shape."""


@dataclass
class Checkpoint:
    model: CRNN
    charset: Charset
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def provenance(**details: Any) -> dict[str, Any]:
    """How, when and on what a model was made; callers add data sets, seeds, runs and rounds."""
    import torch

    return {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "fedocr": __version__, "torch": str(torch.__version__), "host": platform.node(), **details}


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path), then rename tmp_path over `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; a model or data file is meant to be shared
        os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb") as handle:  # flush to disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | Path) -> int:
    """Remove what `atomic_write` left beside `path` when its process was killed mid-write (a
    SIGKILL skips its cleanup); call before writing `path` again. Returns how many went."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def save_checkpoint(path: str | Path, model: CRNN, charset: Charset, provenance: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None, half: bool = False) -> None:
    """Write a checkpoint atomically. half=True stores float weights as fp16 (for shipping)."""
    import torch

    if len(charset) != model.config.num_classes:
        raise CheckpointError(f"model has {model.config.num_classes} classes but charset has {len(charset)}")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": model.config.to_dict(), "charset": charset.to_dict(),
               "state_dict": state, "provenance": provenance or {}, "training": training}
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def compact_checkpoint(src: str | Path, dst: str | Path, **provenance: Any) -> dict[str, Any]:
    """Copy `src` to `dst` as committed and shipped models are kept: fp16 weights, no optimizer
    state, its provenance updated with `provenance`. Returns the provenance written."""
    ckpt = load_checkpoint(src)
    written = {**ckpt.provenance, **provenance}
    save_checkpoint(dst, ckpt.model, ckpt.charset, written, half=True)
    return written


def load_checkpoint(path: str | Path, expect_charset: Charset | None = None) -> Checkpoint:
    """Load a checkpoint; with expect_charset, refuse one trained on another vocabulary."""
    import torch

    from fedocr.model.crnn import CRNN

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable fedocr checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fedocr checkpoint (format {payload.get('format') if isinstance(payload, dict) else None!r})")
    try:
        charset = Charset.from_dict(payload["charset"])
        config = ModelConfig(**payload["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({exc})") from exc
    if config.num_classes != len(charset):
        raise CheckpointError(f"{path}: model has {config.num_classes} classes but its charset {len(charset)}")
    if expect_charset is not None and charset.version != expect_charset.version:
        raise CheckpointError(f"{path}: trained on charset {charset.version} ({len(charset)} classes), "
                              f"expected {expect_charset.version} ({len(expect_charset)} classes)")
    model = CRNN(config)
    try:
        state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        model.load_state_dict(state)
    except (KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint weights ({type(exc).__name__})") from exc
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model config ({first})") from exc
    model.eval()
    return Checkpoint(model, charset, payload.get("provenance") or {}, payload.get("training"))
