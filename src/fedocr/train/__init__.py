"""Training loop, evaluation and metrics (know nothing of Flower, FastAPI or the CLI)."""
from fedocr.train.config import TrainConfig
from fedocr.train.evaluate import EvalReport, evaluate
from fedocr.train.loop import FitResult, Trainer
from fedocr.train.metrics import Score, score

__all__ = ["EvalReport", "FitResult", "Score", "TrainConfig", "Trainer", "evaluate", "score"]
