"""The server's own update on its root lines: the direction FLTrust trusts (pipeline.robust).

The root set is a small, clean slice of the federation's public lines, drawn apart from the
validation lines, so a model is never judged on the lines that steered its aggregation. The
server trains the global model on it exactly as a client trains on its own lines (the round's
rate, `local-epochs` passes, a fresh optimizer) and hands the delta to the aggregator.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

from fedocr.charset import Charset
from fedocr.data import EncodedLines, LineDataset
from fedocr.federated.config import FlConfig, local_seed, local_train_config
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

    def update(self, weights: Weights, keys: Iterable[str], lr: float, server_round: int) -> Weights:
        """The delta of one round of local training from `weights`, on the travelling `keys`."""
        load_weights(self.model, weights)
        recipe = local_train_config(self.cfg, len(self.lines), local_seed(self.cfg.seed, ROOT_NODE, server_round), lr)
        Trainer(self.model, self.charset, self.lines, recipe, log=lambda _: None).fit()
        return select(delta(model_weights(self.model), weights), keys)
