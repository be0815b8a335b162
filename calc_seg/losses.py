"""Weighted cross-entropy (paper §2.2.2): more penalty on calcification pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightedCrossEntropy(nn.Module):
    """Pixel-wise cross-entropy with class weights ``[1, pos_weight]``.

    logits: (N, C, H, W) float; C = 2 uses softmax cross-entropy with ``weight=[1, pos_weight]`` (the mean
    is normalised by the summed pixel weights, torch's convention); C = 1 uses binary cross-entropy on
    the single logit with ``pos_weight``. target: (N, H, W) int64 in {0, 1}.
    """

    def __init__(self, pos_weight: float = 10.0):
        super().__init__()
        self.pos_weight = float(pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            pw = torch.tensor(self.pos_weight, device=logits.device, dtype=logits.dtype)
            return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype), pos_weight=pw)
        weight = torch.ones(logits.shape[1], device=logits.device, dtype=logits.dtype)
        weight[1:] = self.pos_weight
        return F.cross_entropy(logits, target, weight=weight)


def build_loss(cfg, pos_weight: float | None = None) -> nn.Module:
    """The training loss; ``pos_weight`` overrides ``SOLVER.POS_WEIGHT`` (the trainer passes the
    weight it derived from the measured positive-pixel fraction when that key is <= 0)."""
    return WeightedCrossEntropy(cfg.SOLVER.POS_WEIGHT if pos_weight is None else pos_weight)
