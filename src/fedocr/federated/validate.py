"""Server-side validation of a global model: CER with the recognizer's evaluator, plus CTC loss; and the
probe that scores the many candidate models of the contribution scorer."""
from __future__ import annotations

import copy

import torch

from fedocr.charset import Charset
from fedocr.data import EncodedLines, LineDataset, SubsetLines, collate
from fedocr.data.organisations import folder_data, member_lines, public_lines
from fedocr.federated.config import VAL_SETS, ConfigError, FlConfig
from fedocr.federated.pipeline.types import Weights
from fedocr.federated.weights import load_weights
from fedocr.model import CRNN, decode_logits, torch_logits_fn
from fedocr.train import evaluate, score


def validation_lines(cfg: FlConfig, charset: Charset) -> LineDataset:
    """The server's validation set, as `val-data` names it: the federation's synthetic `public` mix,
    the members' own styles (simulation), or a data set on disk (a consortium's agreed lines), whole.
    A set the vocabulary cannot read a line of is refused: it would score every model CER 0."""
    if cfg.val_data == "public":
        lines: LineDataset = public_lines(cfg.federation, cfg.val_lines, cfg.seed, charset.version, charset)
    elif cfg.val_data == "members":
        lines = member_lines(cfg.federation, cfg.val_lines, cfg.seed, charset.version, charset)
    else:
        path = cfg.val_data_path()
        if not path.exists():
            raise ConfigError(f"run config val-data: {path} does not exist on the server")
        lines = folder_data(path)
    if len(EncodedLines(lines, charset)) == 0:
        raise ConfigError(f"run config val-data: {cfg.val_data}: none of its {len(lines)} lines can be written "
                          f"in the model's vocabulary ({len(charset)} characters)")
    return lines


def validation_source(cfg: FlConfig) -> str:
    """What a run validates on, as its server state records it: a resumed run must not change it,
    or its rollback gate and best round would compare CERs of two different sets."""
    if cfg.val_data in VAL_SETS:
        return f"{cfg.val_data} x {cfg.val_lines}, seed {cfg.seed}"
    return str(cfg.val_data_path().resolve())


def validation_loss(model: CRNN, charset: Charset, dataset: LineDataset, batch_size: int = 32) -> float:
    """Mean CTC loss per line over `dataset` (lines the vocabulary cannot encode are skipped)."""
    lines = EncodedLines(dataset, charset)
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(lines), batch_size):
            batch = collate([lines[i] for i in range(start, min(start + batch_size, len(lines)))])
            logits = model(batch["images"], batch["widths"])
            loss = model.ctc_loss(logits, batch["widths"], batch["targets"], batch["target_lengths"])
            n = len(batch["texts"])
            total, count = total + float(loss) * n, count + n
    return total / max(count, 1)


def validate(model: CRNN, charset: Charset, dataset: LineDataset) -> tuple[float, float]:
    """(CER, loss) of `model` on `dataset`."""
    cer = evaluate(torch_logits_fn(model), charset, dataset).cer
    return cer, validation_loss(model, charset, dataset)


# FedPer keeps each client's CTC head at home, FedBN each client's BatchNorm layers: the server's
# copies are the initial ones, never trained, so the global model's CER and loss on the public set
# would describe a model nobody uses.
NOT_VALIDATED = {"backbone": "aggregate=backbone keeps each client's CTC head local, the server's head never trains",
                 "fedbn": "aggregate=fedbn keeps each client's BatchNorm layers local, the server's never train"}


def server_validates(aggregate: str) -> bool:
    """Whether the server's copy of the model is one anybody uses (not FedPer's or FedBN's)."""
    return aggregate not in NOT_VALIDATED


def server_validation(model: CRNN, charset: Charset, dataset: LineDataset,
                      aggregate: str) -> tuple[float | None, float | None, str | None]:
    """(CER, loss, note) of the global model, or (None, None, why) where it means nothing."""
    if not server_validates(aggregate):
        return None, None, f"val_cer not applicable: {NOT_VALIDATED[aggregate]}"
    cer, loss = validate(model, charset, dataset)
    return cer, loss, None


class ValidationProbe:
    """Scores candidate weights on the first `lines` validation lines, for the contribution scorer:
    it evaluates many candidates a round (one per subset of nodes), so the lines are preprocessed
    and batched once, and one forward pass per batch gives both the CTC loss and the greedy CER.
    It loads weights into its own copy of the model, never the server's."""

    def __init__(self, model: CRNN, charset: Charset, dataset: LineDataset, lines: int = 0,
                 batch_size: int = 32) -> None:
        count = min(lines, len(dataset)) if lines else len(dataset)
        encoded = EncodedLines(SubsetLines(dataset, range(count), f"{dataset.name}[:{count}]"), charset)
        samples = [encoded[i] for i in range(len(encoded))]
        self.batches = [collate(samples[i: i + batch_size]) for i in range(0, len(samples), batch_size)]
        self.model, self.charset = copy.deepcopy(model).eval(), charset
        self.lines = len(samples)

    def __call__(self, weights: Weights) -> dict[str, float]:
        load_weights(self.model, weights)
        total, pairs = 0.0, []
        with torch.inference_mode():
            for batch in self.batches:
                logits = self.model(batch["images"], batch["widths"])
                loss = self.model.ctc_loss(logits, batch["widths"], batch["targets"], batch["target_lengths"])
                total += float(loss) * len(batch["texts"])
                decoded = decode_logits(logits.float().numpy(), batch["widths"].numpy(), self.charset)
                pairs += [(d.text, self.charset.normalise(t, keep_unknown=True))
                          for d, t in zip(decoded, batch["texts"])]
        return {"val_loss": total / max(self.lines, 1), "val_cer": score(pairs).cer}
