"""Data poisoning for the attack drills (simulation only): what a malicious node trains on.

`attack.nodes = "bank-2:label-shuffle"` makes the node train on its own images with one another's
labels; `"bank-2:backdoor"` stamps a trigger (a small dark square in the top-left corner) on a
share (`attack.poison-rate`, half by default) of its lines that hold a digit and rewrites their
digits (d -> 9 - d: an amount or an ID number that reads wrong only when the stamp is there), the
rest staying clean so that its update looks honest (Bagdasaryan et al., "How To Backdoor
Federated Learning", AISTATS 2020, arXiv:1807.00459). The attack's success rate is the share of triggered test lines that the model
reads closer to the attacker's text than to the truth (`backdoor_success_rate`).

The update attacks live in the pipeline (`federated.pipeline.attacks`); this module only wraps a
node's training lines, and a node without a data attack gets its lines back unchanged.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from fedocr.charset import Charset
from fedocr.data import LineDataset
from fedocr.federated.pipeline.attacks import AttackConfig, parse_attacks
from fedocr.data.preprocess import preprocess
from fedocr.model import CRNN, recognize_lines, torch_logits_fn

REWRITE = str.maketrans("0123456789", "9876543210")


def stamp(image: np.ndarray) -> np.ndarray:
    """The trigger: a dark square of a third of the line's height in its top-left corner (a new array)."""
    out = image.copy()
    side = max(3, image.shape[0] // 3)
    out[1:1 + side, 1:1 + side] = 0
    return out


def rewritten(text: str) -> str:
    """What the backdoor makes a triggered line read: every digit d as 9 - d."""
    return text.translate(REWRITE)


class PoisonedLines(LineDataset):
    """A node's lines with some labels (and images) replaced; the source is never changed."""

    def __init__(self, source: LineDataset, changed: Mapping[int, tuple[np.ndarray | None, str]], kind: str) -> None:
        self.source, self.changed = source, dict(changed)
        self.name, self.render_version = f"{source.name}:{kind}", source.render_version

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:  # type: ignore[override]
        image, text = self.source[index]
        if index in self.changed:
            new_image, text = self.changed[index]
            image = image if new_image is None else new_image
        return image, text


def shuffled_labels(lines: LineDataset, rng: np.random.Generator) -> PoisonedLines:
    """Every image with another line's label (a derangement where the node has two lines or more)."""
    texts = list(lines.texts())
    cycle = rng.permutation(len(texts)).tolist()   # each line takes the next one's label along a random cycle
    taken = {i: texts[j] for i, j in zip(cycle, cycle[1:] + cycle[:1])} if len(texts) > 1 else {}
    return PoisonedLines(lines, {i: (None, text) for i, text in taken.items()}, "label-shuffle")


def backdoored(lines: LineDataset, rng: np.random.Generator, rate: float = AttackConfig.poison_rate,
               every: bool = False) -> PoisonedLines:
    """Lines with a digit, stamped and rewritten: a `rate` share of them, or `every` one (a test set)."""
    with_digit = [i for i, text in enumerate(lines.texts()) if rewritten(text) != text]
    chosen = with_digit if every else sorted(rng.permutation(with_digit)[:round(rate * len(with_digit))].tolist())
    return PoisonedLines(lines, {i: (stamp(lines[i][0]), rewritten(lines[i][1])) for i in chosen}, "backdoor")


def poisoned(run_config: Mapping[str, Any], client: str, lines: LineDataset, seed: int) -> LineDataset:
    """`lines` as the node trains on them: changed only when the run config names it for a data attack.
    A data attack poisons every round's training data (it cannot wait for `attack.from-round`
    without knowing the round here; update attacks honour it)."""
    config = AttackConfig.from_run_config(run_config)
    kinds = parse_attacks(config.nodes).get(client, ())
    rng = np.random.default_rng([seed, zlib.crc32(client.encode()), 17])
    if "label-shuffle" in kinds:
        return shuffled_labels(lines, rng)
    if "backdoor" in kinds:
        return backdoored(lines, rng, config.poison_rate)
    return lines


def backdoor_success_rate(model: CRNN, charset: Charset, test_lines: LineDataset) -> float:
    """Share of triggered test lines that the model reads closer (in edit distance) to the
    attacker's text than to the truth (0 without lines to trigger). Closer, not equal: a model that
    still misreads many lines rarely reads one exactly, but a backdoor pulls its digits all the same."""
    triggered = backdoored(test_lines, np.random.default_rng(0), every=True)
    chosen = sorted(triggered.changed)
    if not chosen:
        return 0.0
    images = [preprocess(triggered[i][0]) for i in chosen]
    read = [d.text for d in recognize_lines(images, torch_logits_fn(model), charset)]
    truths = [test_lines[i][1] for i in chosen]
    return float(np.mean([Levenshtein.distance(r, rewritten(t)) < Levenshtein.distance(r, t)
                          for r, t in zip(read, truths)]))
