"""Server-side validation of a global model: CER with the recognizer's evaluator, plus CTC loss."""
from __future__ import annotations

import torch

from fedocr.charset import Charset
from fedocr.data import EncodedLines, LineDataset, collate
from fedocr.model import CRNN, torch_logits_fn
from fedocr.train import evaluate


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


# FedPer keeps each client's CTC head at home: the server's copy is the initial head, never trained,
# so its CER and loss on the public set would describe a model nobody uses.
BACKBONE_NOTE = ("val_cer not applicable: aggregate=backbone keeps each client's CTC head local, the server's "
                 "head never trains")


def server_validation(model: CRNN, charset: Charset, dataset: LineDataset,
                      aggregate: str) -> tuple[float | None, float | None, str | None]:
    """(CER, loss, note) of the global model, or (None, None, why) where it means nothing."""
    if aggregate == "backbone":
        return None, None, BACKBONE_NOTE
    cer, loss = validate(model, charset, dataset)
    return cer, loss, None
