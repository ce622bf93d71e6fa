"""Training loop, evaluation and metrics (know nothing of Flower, FastAPI or the CLI)."""
from typing import Any

from fedocr.train.config import TrainConfig
from fedocr.train.evaluate import EvalReport, evaluate
from fedocr.train.metrics import Score, score

__all__ = ["EvalReport", "FitResult", "Score", "TrainConfig", "Trainer", "evaluate", "score"]


def __getattr__(name: str) -> Any:
    """The loop imports torch; evaluation and metrics (also the server's) do not need it."""
    if name in ("FitResult", "Trainer"):
        from fedocr.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
