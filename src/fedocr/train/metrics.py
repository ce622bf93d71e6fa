"""Recognition metrics: character error rate and exact-line accuracy."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein


@dataclass(frozen=True)
class Score:
    cer: float             # sum of edit distances / sum of reference lengths
    line_accuracy: float   # share of lines read exactly
    n: int
    errors: int            # total edit distance
    chars: int             # total reference characters


def score(pairs: Iterable[tuple[str, str]]) -> Score:
    """Score (prediction, reference) pairs."""
    errors = chars = exact = n = 0
    for prediction, reference in pairs:
        errors += Levenshtein.distance(prediction, reference)
        chars += len(reference)
        exact += prediction == reference
        n += 1
    cer = errors / chars if chars else (0.0 if errors == 0 else 1.0)
    return Score(cer=cer, line_accuracy=exact / n if n else 0.0, n=n, errors=errors, chars=chars)
