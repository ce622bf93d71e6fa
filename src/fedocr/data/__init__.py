"""Preprocessing, synthetic rendering, dataset readers and batching."""
from fedocr import lazy_attributes
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


# Batching for training needs torch; reading and preprocessing do not.
__getattr__ = lazy_attributes(__name__, dict.fromkeys(("EncodedLines", "WidthBucketSampler", "collate"), "fedocr.data.batch"))
