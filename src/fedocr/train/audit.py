"""Privacy audit of a trained recognizer: membership inference and canary exposure.

**Membership inference** (Yeom et al., "Privacy Risk in Machine Learning: Analyzing the
Connection to Overfitting", CSF 2018): the attacker guesses "trained on" when a line's loss is
low. Its power over every threshold at once is the ROC AUC of -loss on training lines (members)
vs held-out lines of the same distribution (non-members): 0.5 is chance, 1.0 tells them apart
perfectly.

**Canary exposure** (Carlini et al., "The Secret Sharer", USENIX Security 2019): rank the
planted secret among |R| random candidates of the same format by the model's score;
exposure = log2(|R| + 1) - log2(rank), between 0 and log2(|R| + 1) bits. A secret the model
never saw ranks uniformly at random, so its expected exposure (`chance_exposure`) is about
1/ln 2 = 1.44 bits, whatever |R|.

Adapted to OCR: a language model scores a secret by its likelihood, but an OCR model reads any
number it is shown, so the score is the CTC loss of a candidate's text on an image of that
candidate, every candidate rendered exactly as the canary (same font, size and noise draws, a
rendering seed the canary was not trained on). What memorisation shows is then an unusually low
loss on the trained secret compared with fresh numbers drawn the same way; averaging a text's
loss over a few renderings keeps one rendering's noise from deciding its rank.

**Difficulty calibration** (Watson et al., "On the Importance of Difficulty Calibration in
Membership Attacks", ICLR 2022; the offline reference model of Carlini et al.'s LiRA, 2022): a
line's loss says as much about how hard it is to read as about whether it was trained on. When
the audited model was fine-tuned from a public starting model (fedocr's shipped base model is
one anyone can download), the attacker holds that model too, and scores each line by the loss
the training took off it: loss under the audited model minus loss under the reference. For a
fine-tuned model most of a line's raw loss is how hard the line is, which the reference shares;
fine-tuned from fedocr's base model, the calibrated attack reads AUC about 0.03 above the raw
one, with or without DP (bench/fl_privacy.py). It cannot help with a secret the starting model
already reads: a line read correctly has almost no loss, so training gets almost no gradient
from it and memorises nothing to find. Neither score is neutral: the raw loss ranks numbers that
are easy in the audit's renderings high, the difference ranks numbers with room to improve high;
never-planted controls, drawn the same way, show what either bias alone does.

The occluded variant (`occluded_exposure`) is Carlini's prefix-completion setting: the canary's
last digits are painted over, one image is scored against every completion of its visible part,
and only a model that remembers the digits can prefer the right ones. Measured on tiny CRNNs
that trained on 50 renderings of each secret, it does not work: planted secrets ranked at
chance (mean 1.0 bits vs 1.9 for controls, |R| 999), and blurring the tail instead of blanking
it let the glyphs leak, so controls scored as high as planted secrets. A CRNN trained on clean
lines reads what it sees and has learnt no prior to fill a blank with; the variant stays for
models that do (trained on heavily degraded lines), off by default.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fedocr.charset import Charset
from fedocr.data import LineDataset, collate, preprocess
from fedocr.data.canaries import occluded, renderings
from fedocr.data.presets import Preset
from fedocr.model import CRNN


def ctc_losses(model: CRNN, charset: Charset, samples: Sequence[tuple[np.ndarray, str]],
               batch_size: int = 64) -> np.ndarray:
    """Each (raw image, text)'s CTC loss (nats) under `model` in eval mode, in input order.
    Texts must be in the vocabulary (a character the model cannot write has no loss)."""
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            chunk = [(preprocess(image), charset.encode(text).ids, text) for image, text in samples[start:start + batch_size]]
            if any(not ids for _, ids, _ in chunk):
                raise ValueError("every text needs at least one character of the vocabulary")
            batch = collate(chunk)
            logits = model(batch["images"], batch["widths"])  # type: ignore[arg-type]
            out.append(model.ctc_loss(logits, batch["widths"], batch["targets"], batch["target_lengths"],  # type: ignore[arg-type]
                                      reduction="none").numpy())
    return np.concatenate(out) if out else np.zeros(0)


def attack_scores(model: CRNN, charset: Charset, samples: Sequence[tuple[np.ndarray, str]],
                  reference: CRNN | None = None) -> dict[str, np.ndarray]:
    """What the attacker ranks lines by, lower meaning "more likely trained on": `raw`, the CTC
    loss under `model`, and with a `reference`, `calibrated`: that loss less the reference's
    (difficulty calibration, Watson et al. 2022)."""
    raw = ctc_losses(model, charset, samples)
    return {"raw": raw} if reference is None else {"raw": raw, "calibrated": raw - ctc_losses(reference, charset, samples)}


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC = P(a positive scores above a negative), ties counted half (Mann-Whitney U from
    midranks)."""
    pos, neg = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - counts + (counts + 1) / 2)[inverse]  # tied scores share their mean rank
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def membership_auc(model: CRNN, charset: Charset, members: LineDataset, non_members: LineDataset,
                   reference: CRNN | None = None) -> dict[str, float]:
    """Loss-threshold membership inference (Yeom et al. 2018): AUC of -score, members vs
    non-members, per attack of `attack_scores`. Lines with characters outside the vocabulary are
    left out of both sides."""
    def scores(lines: LineDataset) -> dict[str, np.ndarray]:
        samples = [lines[i] for i in range(len(lines))]
        encoded = [charset.encode(text) for _, text in samples]
        return attack_scores(model, charset, [s for s, e in zip(samples, encoded) if e.ids and not e.unknown], reference)

    inside, outside = scores(members), scores(non_members)
    return {attack: auc(-inside[attack], -outside[attack]) for attack in inside}


def exposure(canary_score: float, candidate_scores: np.ndarray) -> float:
    """Carlini et al. 2019: log2(|R| + 1) - log2(rank of the canary), lowest score first, among
    itself and the |R| candidates (ties counted half)."""
    scores = np.asarray(candidate_scores, dtype=float)
    rank = 1 + np.sum(scores < canary_score) + 0.5 * np.sum(scores == canary_score)
    return max_exposure(len(scores)) - math.log2(rank)


def max_exposure(candidates: int) -> float:
    """The exposure of a secret ranked first among itself and `candidates` others."""
    return math.log2(candidates + 1)


def chance_exposure(candidates: int) -> float:
    """Expected exposure of a secret the model never saw (its rank uniform over 1..|R|+1)."""
    n = candidates + 1
    return math.log2(n) - math.lgamma(n + 1) / math.log(2) / n


def canary_exposure(model: CRNN, charset: Charset, canary: str, candidates: Sequence[str], preset: Preset,
                    seed: int, n_renderings: int = 1, reference: CRNN | None = None) -> dict[str, float]:
    """Exposure of `canary` among `candidates` (same format, canary excluded), per attack of
    `attack_scores`. Each text is scored by its mean over `n_renderings` renderings of itself in
    `preset`'s style, all texts drawn with the same rendering seeds (pick one the canary was not
    trained on)."""
    texts = [canary, *candidates]
    samples = [line for text in texts for line in renderings(preset, text, n_renderings, seed, charset)]
    out = {}
    for attack, scores in attack_scores(model, charset, samples, reference).items():
        per_text = scores.reshape(len(texts), n_renderings).mean(axis=1)
        out[attack] = exposure(float(per_text[0]), per_text[1:])
    return out


def occluded_exposure(model: CRNN, charset: Charset, canary: str, completions: Sequence[str], hidden: int,
                      preset: Preset, seed: int) -> float:
    """Exposure of `canary` when its last `hidden` characters are painted over: one clean
    rendering, scored with the canary's text and with each of `completions` (the canary's
    visible part followed by other random digits)."""
    if any(c[:-hidden] != canary[:-hidden] for c in completions):
        raise ValueError("completions must share the canary's visible part")
    image = occluded(preset, canary, hidden, seed, charset)
    losses = ctc_losses(model, charset, [(image, t) for t in [canary, *completions]], batch_size=256)
    return exposure(float(losses[0]), losses[1:])
