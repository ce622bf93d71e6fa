"""CRNN: a CNN that reduces a text line to a sequence of column features, a BiLSTM, a linear head.

Shi, Bai and Yao, "An End-to-End Trainable Neural Network for Image-based Sequence Recognition
and Its Application to Scene Text Recognition" (TPAMI 2017, arXiv:1507.05717), trained with CTC
(Graves et al., ICML 2006).

A linear skip path around the BiLSTM lets training leave CTC's all-blank plateau in a few
hundred steps instead of thousands.

Input is a batch of grayscale lines of height 32 and any width, ink bright on a zero
background (see `fedocr.data.preprocess`), right-padded to the widest line, with each line's
true width. Widths are multiples of 4, the CNN's horizontal stride, and every block zeroes the
padded columns, so a line's logits do not depend on how much padding its batch needed (the
BiLSTM sees packed sequences for the same reason). The model returns logits only: decoding
lives outside the graph so PyTorch and ONNX Runtime share one decoder.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fedocr.model.config import INPUT_HEIGHT, SIZES, WIDTH_STRIDE, ModelConfig, NormKind

__all__ = ["CRNN", "INPUT_HEIGHT", "ModelConfig", "SIZES", "WIDTH_STRIDE"]


def _norm(kind: NormKind, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels // 4), channels)


class _ConvBlock(nn.Module):
    """conv -> norm -> ReLU (not in place: Opacus hooks need the inputs), then zero the padding."""

    def __init__(self, cin: int, cout: int, norm: NormKind, kernel: tuple[int, int] = (3, 3),
                 padding: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)
        self.norm = _norm(norm, cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x))) * mask


def _column_mask(widths: torch.Tensor, width: int, stride: int) -> torch.Tensor:
    """(N, 1, 1, width) mask that is 1 on a line's true columns at this resolution."""
    cols = torch.arange(width, device=widths.device).view(1, 1, 1, width)
    return (cols < (widths // stride).view(-1, 1, 1, 1)).to(torch.float32)


class CRNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        (c1, c2, c3, c4, c5), hidden = SIZES[config.size]
        n = config.norm
        self.block1 = _ConvBlock(1, c1, n)          # 32 x W   -> pool -> 16 x W/2
        self.block2 = _ConvBlock(c1, c2, n)         # 16 x W/2 -> pool ->  8 x W/4
        self.block3a = _ConvBlock(c2, c3, n)
        self.block3b = _ConvBlock(c3, c3, n)        #  8 x W/4 -> pool ->  4 x W/4
        self.block4 = _ConvBlock(c3, c4, n)         #  4 x W/4 -> pool ->  2 x W/4
        self.block5 = _ConvBlock(c4, c5, n, kernel=(2, 3), padding=(0, 1))  # -> 1 x W/4
        self.pool2x2 = nn.MaxPool2d(2, 2)
        self.pool2x1 = nn.MaxPool2d((2, 1), (2, 1))
        self.rnn = nn.LSTM(c5, hidden, num_layers=config.lstm_layers, bidirectional=True,
                           batch_first=True, dropout=0.1 if config.lstm_layers > 1 else 0.0)
        # A linear path around the BiLSTM: CTC training from scratch otherwise sits on a long
        # all-blank plateau while the LSTM learns to pass features through.
        self.skip = nn.Linear(c5, 2 * hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * hidden, config.num_classes)

    def forward(self, images: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """images (N, 1, 32, W) with W a multiple of 4; widths (N,) true widths in pixels.

        Returns logits (N, T, num_classes) with T = W / 4; timestep t of line i is valid
        while t < widths[i] / 4.
        """
        w = images.shape[-1]
        x = self.block1(images, _column_mask(widths, w, 1))
        x = self.pool2x2(x)
        x = self.block2(x, _column_mask(widths, w // 2, 2))
        x = self.pool2x2(x)
        m4 = _column_mask(widths, w // 4, WIDTH_STRIDE)
        x = self.block3b(self.block3a(x, m4), m4)
        x = self.pool2x1(x)
        x = self.pool2x1(self.block4(x, m4))
        x = self.block5(x, m4)                     # (N, C, 1, T)
        seq = x.squeeze(2).transpose(1, 2)         # (N, T, C), batch first for Opacus
        lengths = (widths // WIDTH_STRIDE).clamp(min=1).cpu()
        packed = pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=seq.shape[1])
        return self.head(self.dropout(out + self.skip(seq)))

    @staticmethod
    def output_lengths(widths: torch.Tensor) -> torch.Tensor:
        return (widths // WIDTH_STRIDE).clamp(min=1)

    def ctc_loss(self, logits: torch.Tensor, widths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        """Mean CTC loss per line; zero_infinity drops lines too long for their width.
        reduction="none": each line's negative log-likelihood of its label (nats, not divided by
        its length), what a privacy audit scores lines by."""
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, N, C)
        return nn.functional.ctc_loss(log_probs, targets, self.output_lengths(widths), target_lengths,
                                      blank=0, reduction=reduction, zero_infinity=True)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
