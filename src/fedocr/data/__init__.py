"""Preprocessing, synthetic rendering, dataset readers and batching."""
from typing import Any

from fedocr.data.datasets import (ConcatLines, DatasetError, InMemoryLines, LabelFileDataset, LineDataset, LmdbDataset, SubsetLines, SyntheticLines,
                                  decode_image, open_dataset, read_image)
from fedocr.data.preprocess import preprocess
from fedocr.data.presets import PRESETS, UnknownPreset, get_preset
from fedocr.data.writer import write_line_set

__all__ = [
    "PRESETS", "ConcatLines", "DatasetError", "EncodedLines", "InMemoryLines", "LabelFileDataset", "LineDataset", "LmdbDataset", "SubsetLines", "SyntheticLines",
    "UnknownPreset", "WidthBucketSampler", "collate", "decode_image", "get_preset", "open_dataset",
    "preprocess", "read_image", "write_line_set",
]


_BATCHING = {"EncodedLines", "WidthBucketSampler", "collate"}


def __getattr__(name: str) -> Any:
    """Batching for training needs torch; reading and preprocessing (the ONNX inference path of
    `fedocr ocr` and the server) must not pay its import (2 s and 300 MB)."""
    if name in _BATCHING:
        from fedocr.data import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
