"""CRNN definition, CTC decoding and the checkpoint format."""
from fedocr import lazy_attributes
from fedocr.model.checkpoint import (Checkpoint, CheckpointError, compact_checkpoint, load_checkpoint,
                                     save_checkpoint)
from fedocr.model.config import ModelConfig
from fedocr.model.decode import Decoded, beam_search, greedy_decode, log_softmax
from fedocr.model.infer import (LogitsFn, decode_logits, pad_lines, recognize_lines, reread_off_density,
                               torch_logits_fn)

__all__ = [
    "CRNN", "Checkpoint", "CheckpointError", "Decoded", "ModelConfig", "beam_search", "compact_checkpoint",
    "greedy_decode", "load_checkpoint", "log_softmax", "save_checkpoint", "LogitsFn", "decode_logits", "pad_lines",
    "recognize_lines", "reread_off_density", "torch_logits_fn",
]


__getattr__ = lazy_attributes(__name__, {"CRNN": "fedocr.model.crnn"})   # the network imports torch
