"""The server's own update on its root lines: the direction FLTrust trusts (pipeline.robust).

The root set is a small, clean slice of the federation's public lines, drawn apart from the
validation lines, so a model is never judged on the lines that steered its aggregation. The
server trains the global model on it as a client trains (the round's rate, a fresh optimizer)
for the median number of local steps the round's clients report, as FLTrust has the server and
the clients take the same local iterations: FLTrust rescales every update to the root update's
norm, so a root update of more steps would make every round's step larger (bench/fl_robust.py at
commit 1e0eb1d: a 64-line root set at `local-epochs` passes, twice the steps of the 8-24-line
branches, ended a clean 2-round run at 1.21x clean FedAvg's CER).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

from fedocr.charset import Charset
from fedocr.data import EncodedLines, LineDataset
from fedocr.federated.config import FlConfig, local_recipe, local_seed, local_train_config
from fedocr.federated.pipeline.transforms import delta, select
from fedocr.federated.pipeline.types import Weights
from fedocr.federated.weights import load_weights, model_weights
from fedocr.model import CRNN
from fedocr.train import Trainer

ROOT_NODE = "server-root"   # the local-seed name of the server's training stream


class RootTrainer:
    """Trains its own copy of the model (never the server's) on the root lines."""

    def __init__(self, cfg: FlConfig, model: CRNN, charset: Charset, lines: LineDataset) -> None:
        self.cfg, self.charset = cfg, charset
        self.model = copy.deepcopy(model)
        self.lines = EncodedLines(lines, charset)

    def update(self, weights: Weights, keys: Iterable[str], lr: float, server_round: int,
               steps: int | None = None) -> Weights:
        """The delta of `steps` local steps (default: `local-epochs` passes over the root lines)
        from `weights`, on the travelling `keys`."""
        load_weights(self.model, weights)
        seed = local_seed(self.cfg.seed, ROOT_NODE, server_round)
        recipe = (local_recipe(self.cfg, steps, seed=seed, lr=lr) if steps
                  else local_train_config(self.cfg, len(self.lines), seed, lr))
        Trainer(self.model, self.charset, self.lines, recipe, log=lambda _: None).fit()
        return select(delta(model_weights(self.model), weights), keys)
