"""CRNN definition, CTC decoding and the checkpoint format."""
from typing import Any

from fedocr.model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from fedocr.model.config import ModelConfig
from fedocr.model.decode import Decoded, beam_search, greedy_decode, log_softmax
from fedocr.model.infer import LogitsFn, decode_logits, pad_lines, recognize_lines, torch_logits_fn

__all__ = [
    "CRNN", "Checkpoint", "CheckpointError", "Decoded", "ModelConfig", "beam_search",
    "greedy_decode", "load_checkpoint", "log_softmax", "save_checkpoint", "LogitsFn", "decode_logits", "pad_lines",
    "recognize_lines", "torch_logits_fn",
]


def __getattr__(name: str) -> Any:
    """The CRNN's module imports torch: only for those who build one, not for ONNX Runtime readers."""
    if name == "CRNN":
        from fedocr.model.crnn import CRNN

        return CRNN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
