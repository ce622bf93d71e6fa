"""From (image, text) pairs to padded training batches.

`EncodedLines` preprocesses and encodes each line (lines with characters outside the
vocabulary or with no text are skipped and counted, never silently); `collate` right-pads a
batch to its widest line; `WidthBucketSampler` groups lines of similar width so that little
compute is spent on padding.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fedocr.charset import Charset, UnknownCounter
from fedocr.data.datasets import LineDataset
from fedocr.data.preprocess import preprocess
from fedocr.model.infer import pad_lines

Sample = tuple[np.ndarray, list[int], str]


class EncodedLines(Dataset[Sample]):
    """A LineDataset as (preprocessed image, label ids, text), dropping unusable labels with a count."""

    def __init__(self, lines: LineDataset, charset: Charset, indices: Sequence[int] | None = None) -> None:
        self.lines, self.charset = lines, charset
        self.unknown = UnknownCounter()
        self.empty = 0
        keep, self.label_lengths = [], []
        digest = hashlib.sha256(lines.render_version.encode("utf-8"))
        all_texts = list(lines.texts())
        for i in indices if indices is not None else range(len(lines)):
            text = all_texts[i]
            encoded = charset.encode(text)
            self.unknown.add(encoded)
            if encoded.unknown:
                continue
            if not encoded.ids:
                self.empty += 1
                continue
            keep.append(i)
            self.label_lengths.append(len(encoded.ids))
            digest.update(text.encode("utf-8") + b"\n")
        self.indices = keep
        # Identifies the data (texts and order), so a resumed run can refuse other data.
        self.fingerprint = f"{len(keep)}:{digest.hexdigest()[:16]}"

    @property
    def skipped(self) -> int:
        return self.unknown.lines + self.empty

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        image, text = self.lines[self.indices[index]]
        return preprocess(image), self.charset.encode(text).ids, text


def collate(samples: list[Sample]) -> dict[str, torch.Tensor | list[str]]:
    images, widths = pad_lines([s[0] for s in samples])
    targets = [torch.tensor(s[1], dtype=torch.long) for s in samples]
    return {
        "images": torch.from_numpy(images),
        "widths": torch.from_numpy(widths),
        "targets": torch.cat(targets),
        "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.long),
        "texts": [s[2] for s in samples],
    }


class WidthBucketSampler(Sampler[list[int]]):
    """Batches of similar text length (a proxy for width), shuffled per epoch under a seed.

    Lines are shuffled, cut into pools of `pool` batches, sorted by label length inside a pool
    and batched; the batches are then shuffled. `start_batch` resumes mid-epoch exactly.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0,
                 start_batch: int = 0, pool: int = 32, bucket: bool = True) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.epoch, self.start_batch = batch_size, seed, epoch, start_batch
        self.pool, self.bucket = pool, bucket

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if self.bucket:
            size = self.pool * self.batch_size
            chunks = [order[i: i + size] for i in range(0, len(order), size)]
            order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i: i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.bucket:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.start_batch:])

    def __len__(self) -> int:
        return max(0, -(-len(self.lengths) // self.batch_size) - self.start_batch)
