"""Evaluate a recognizer on a line data set: CER, line accuracy, ms/line, by length."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from fedocr.charset import Charset, UnknownCounter
from fedocr.data import LineDataset, preprocess
from fedocr.model import LogitsFn, recognize_lines
from fedocr.train.metrics import score

LENGTH_BUCKETS = ((1, 5), (6, 20), (21, 10_000))


@dataclass
class EvalReport:
    name: str
    cer: float
    line_accuracy: float
    n: int
    ms_per_line: float            # preprocessing + inference + decoding, excluding disk reads
    by_length: dict[str, dict[str, float]] = field(default_factory=dict)
    unknown: str = ""             # reference characters outside the vocabulary (they count as errors)
    examples: list[dict[str, str]] = field(default_factory=list)  # a few misreadings

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _bucket_name(low: int, high: int) -> str:
    return f"{low}-{high}" if high < 10_000 else f"{low}+"


def evaluate(logits_fn: LogitsFn, charset: Charset, dataset: LineDataset, batch_size: int = 32,
             beam_width: int = 0, limit: int | None = None, reread: bool = False) -> EvalReport:
    """Read every line of `dataset` and score it against its label. `reread`: read lines set off
    the model's density again, as the service does (`fedocr.model.reread_off_density`); training
    and federated validation read once."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    samples = [dataset[i] for i in range(count)]
    unknown = UnknownCounter()
    references = []
    for _, text in samples:
        unknown.add(charset.encode(text))
        references.append(charset.normalise(text, keep_unknown=True))
    start = time.perf_counter()
    lines = [preprocess(image) for image, _ in samples]
    predictions = [d.text for d in recognize_lines(lines, logits_fn, charset, batch_size, beam_width, reread)]
    elapsed = time.perf_counter() - start
    pairs = list(zip(predictions, references))
    overall = score(pairs)
    by_length = {}
    for low, high in LENGTH_BUCKETS:
        bucket = [(p, r) for p, r in pairs if low <= len(r) <= high]
        if bucket:
            s = score(bucket)
            by_length[_bucket_name(low, high)] = {"cer": s.cer, "line_accuracy": s.line_accuracy, "n": s.n}
    wrong = [{"reference": r, "prediction": p} for p, r in pairs if p != r][:5]
    return EvalReport(name=dataset.name, cer=overall.cer, line_accuracy=overall.line_accuracy, n=overall.n,
                      ms_per_line=1000 * elapsed / max(count, 1), by_length=by_length,
                      unknown=unknown.summary(), examples=wrong)


def evaluate_many(logits_fn: LogitsFn, charset: Charset, datasets: Sequence[LineDataset],
                  **kwargs: object) -> list[EvalReport]:
    return [evaluate(logits_fn, charset, d, **kwargs) for d in datasets]  # type: ignore[arg-type]
