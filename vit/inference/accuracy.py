"""The one top-k accuracy, and its one unit: percent.

``topk_correct`` counts, ``percent`` turns a count into the unit every file and log line uses.
The validation pass of training (``vit.training.epoch.validate``) and the evaluation report
(``vit.inference.metrics.EvalAccumulator``) both use them. Plain torch, so training does not
import torchmetrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["topk_correct", "percent", "check_scores"]


def check_scores(scores: Tensor, targets: Tensor) -> None:
    """Scores (N, C) and targets (N,), or a ValueError that says which shape is wrong."""
    if scores.ndim != 2:
        raise ValueError(f"expected scores of shape (N, C), got {tuple(scores.shape)}")
    if targets.ndim != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"expected targets of shape ({scores.shape[0]},), got {tuple(targets.shape)}"
        )


def topk_correct(scores: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """How many rows of `scores` (N, C) have their target among their k highest scores, for each
    k in `ks` (k capped at C, so top-5 of 3 classes counts every row): a float64 tensor
    (len(ks),) on the scores' device, so summing it over batches never waits for the device."""
    check_scores(scores, targets)
    num_classes = scores.shape[1]
    top = scores.topk(min(max(ks), num_classes), dim=1).indices  # (N, max k)
    hits = top == targets[:, None]  # (N, max k): at most one hit per row
    return torch.stack([hits[:, :min(k, num_classes)].any(dim=1).sum() for k in ks]).double()


def percent(part: float, whole: float) -> float:
    """``part`` of ``whole`` in percent: the one unit of accuracy."""
    return 100.0 * part / whole
