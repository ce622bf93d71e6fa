"""Training loop, evaluation and metrics (know nothing of Flower, FastAPI or the CLI)."""
from fedocr import lazy_attributes
from fedocr.train.config import TrainConfig
from fedocr.train.evaluate import EvalReport, evaluate
from fedocr.train.metrics import Score, score

__all__ = ["EvalReport", "FitResult", "Score", "TrainConfig", "Trainer", "evaluate", "score"]


# The loop imports torch; evaluation and metrics (also the server's) do not.
__getattr__ = lazy_attributes(__name__, dict.fromkeys(("FitResult", "Trainer"), "fedocr.train.loop"))
