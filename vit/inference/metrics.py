"""Classification metrics for evaluation and training.

Accuracy is a percent (0-100) everywhere a user reads it; ``vit.inference.accuracy`` holds the
one top-k count that ``EvalAccumulator`` and the validation pass of training both use.
Probabilities, confidences and the calibration error stay in [0, 1].

`EvalAccumulator` gathers everything `vit evaluate` reports (accuracy, per-class scores, confusion
matrix, calibration error, mean loss) on top of torchmetrics, so it works on any device and
synchronises across processes under DDP. The module-level functions are small, pure helpers
for plotting data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import (
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from vit.inference.accuracy import check_scores, percent, topk_correct

logger = logging.getLogger(__name__)

ECE_BINS = 15
_PROB_SUM_TOLERANCE = 1e-3
_LOG_EPS = 1e-12


def is_probabilities(scores: Tensor) -> bool:
    """True when every row of `scores` (N, C) is already a probability distribution.

    Rows must lie in [0, 1] and sum to 1 within 1e-3 (or the rounding of a half-precision
    dtype). Real logits practically never pass this test.
    """
    if scores.numel() == 0:
        return True
    if not (bool(scores.min() >= 0) and bool(scores.max() <= 1)):
        return False
    tolerance = max(_PROB_SUM_TOLERANCE, 2 * torch.finfo(scores.dtype).eps)
    row_sums = scores.float().sum(dim=-1)
    return bool(((row_sums - 1).abs() <= tolerance).all())


def as_probabilities(scores: Tensor) -> Tensor:
    """Return `scores` (N, C) as float32 probabilities, applying softmax to logits."""
    scores = scores.detach()
    return scores.float() if is_probabilities(scores) else scores.float().softmax(dim=-1)


def _log_probabilities(scores: Tensor) -> Tensor:
    """Log-probabilities of `scores` (N, C), computed stably from logits where possible."""
    scores = scores.detach()
    if is_probabilities(scores):
        return scores.float().clamp_min(_LOG_EPS).log()
    return scores.float().log_softmax(dim=-1)


class EvalAccumulator:
    """Accumulates multiclass evaluation metrics over batches.

    Feed it logits or probabilities (detected per batch: rows that are non-negative, at most 1
    and sum to 1 are probabilities, anything else is softmaxed). States follow the device of
    the first batch (or `to(device)`). Under DDP every rank must call `compute()`: torchmetrics
    gathers the states of all ranks there, so the result covers the whole data set (samples a
    `DistributedSampler` pads in are counted twice). With NCCL call `to(device)` up front, so a
    rank that gets no batch still holds its states on the GPU.
    """

    def __init__(self, num_classes: int, process_group: Any | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.top_k = min(5, num_classes)
        kwargs: dict[str, Any] = {"num_classes": num_classes, "process_group": process_group}
        self._metrics = MetricCollection(
            {
                "precision": MulticlassPrecision(average=None, **kwargs),
                "recall": MulticlassRecall(average=None, **kwargs),
                "f1": MulticlassF1Score(average=None, **kwargs),
                "confusion_matrix": MulticlassConfusionMatrix(**kwargs),
                "ece": MulticlassCalibrationError(n_bins=ECE_BINS, norm="l1", **kwargs),
            }
        )
        self._loss = MeanMetric(process_group=process_group)
        self._top1 = SumMetric(process_group=process_group)  # rows right at top-1 / top-5
        self._top5 = SumMetric(process_group=process_group)

    @property
    def device(self) -> torch.device:
        """Device the metric states live on."""
        return self._loss.device

    def to(self, device: torch.device | str) -> EvalAccumulator:
        """Move the metric states to `device` and return self."""
        logger.debug("moving evaluation metric states to %s", device)
        for metric in (self._metrics, self._loss, self._top1, self._top5):
            metric.to(device)
        return self

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        for metric in (self._metrics, self._loss, self._top1, self._top5):
            metric.reset()

    @torch.no_grad()
    def update(
        self, scores: Tensor, targets: Tensor, loss_sum: float | Tensor | None = None
    ) -> None:
        """Add a batch: `scores` (N, C) logits or probabilities, `targets` (N,) class indices.

        `loss_sum` is the summed loss of the batch (e.g. the training criterion's value times
        N); when None the cross-entropy of `scores` is used.
        """
        check_scores(scores, targets)
        if scores.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {scores.shape[1]}")
        count = scores.shape[0]
        if count == 0:
            return
        if scores.device != self.device:
            self.to(scores.device)
        targets = targets.to(device=scores.device, dtype=torch.long)
        probs = as_probabilities(scores)
        self._metrics.update(probs, targets)
        top1, top5 = topk_correct(probs, targets, ks=(1, self.top_k))
        self._top1.update(top1)
        self._top5.update(top5)
        if loss_sum is None:
            losses = -_log_probabilities(scores).gather(1, targets.unsqueeze(1)).squeeze(1)
            self._loss.update(losses)
        else:
            mean = torch.as_tensor(loss_sum, dtype=torch.float32, device=self.device) / count
            self._loss.update(mean, weight=count)

    @torch.no_grad()
    def compute(self) -> dict[str, Any]:
        """Metrics over everything seen (all ranks under DDP), as CPU tensors and Python numbers.

        Keys: top1, top5 (percent; None with 5 classes or fewer), loss, ece (in [0, 1]), num_images (numbers); precision,
        recall, f1 (percent), support (C,) and confusion_matrix (C, C), rows = true class
        (tensors).
        """
        values = {name: value.detach().cpu() for name, value in self._metrics.compute().items()}
        loss = self._loss.compute().detach().cpu()
        matrix = values["confusion_matrix"].long()
        support = matrix.sum(dim=1)
        num_images = int(support.sum())
        return {
            "top1": percent(float(self._top1.compute()), num_images) if num_images else math.nan,
            # top-5 of 5 or fewer classes is 100% whatever the model: not reported
            "top5": None if self.num_classes <= 5 else
            percent(float(self._top5.compute()), num_images) if num_images else math.nan,
            "loss": float(loss),
            "ece": float(values["ece"]),
            "num_images": num_images,
            "precision": 100.0 * values["precision"].float(),
            "recall": 100.0 * values["recall"].float(),
            "f1": 100.0 * values["f1"].float(),
            "support": support,
            "confusion_matrix": matrix,
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def build_report(computed: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """A JSON-serialisable report from `EvalAccumulator.compute()`; non-finite numbers -> None."""
    matrix = torch.as_tensor(computed["confusion_matrix"])
    if matrix.shape != (len(classes), len(classes)):
        raise ValueError(
            f"confusion matrix of shape {tuple(matrix.shape)} does not match {len(classes)} classes"
        )
    per_class = {
        name: {
            "precision": _finite_or_none(float(computed["precision"][i])),
            "recall": _finite_or_none(float(computed["recall"][i])),
            "f1": _finite_or_none(float(computed["f1"][i])),
            "support": int(computed["support"][i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "top1": _finite_or_none(float(computed["top1"])),
        "top5": None if computed["top5"] is None else _finite_or_none(float(computed["top5"])),
        "loss": _finite_or_none(float(computed["loss"])),
        "ece": _finite_or_none(float(computed["ece"])),
        "num_images": int(computed["num_images"]),
        "classes": list(classes),
        "per_class": per_class,
        "confusion_matrix": [[int(v) for v in row] for row in matrix.tolist()],
    }


def reliability_bins(probs: Tensor, targets: Tensor, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Per-confidence-bin accuracy for a reliability diagram.

    Bins are [i/n, (i+1)/n) like torchmetrics; the returned `ece` uses torchmetrics' binning
    exactly (a confidence of exactly 1.0 gets its own slot there), while for display such
    samples are counted in the last bin. Empty bins have confidence and accuracy 0.
    Returns lists: bin_edges (n+1), bin_confidence, bin_accuracy, bin_count (n); and ece.
    """
    check_scores(probs, targets)
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    confidence, predicted = as_probabilities(probs).max(dim=-1)
    correct = predicted.eq(targets.to(predicted.device)).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
    slots = torch.bucketize(confidence, edges, right=True) - 1  # n_bins + 1 slots
    count = torch.zeros(n_bins + 1, dtype=torch.float64, device=confidence.device)
    conf_sum = torch.zeros_like(count)
    acc_sum = torch.zeros_like(count)
    count.scatter_add_(0, slots, torch.ones_like(correct))
    conf_sum.scatter_add_(0, slots, confidence.double())
    acc_sum.scatter_add_(0, slots, correct)
    total = max(int(count.sum()), 1)
    ece = float((acc_sum - conf_sum).abs().sum()) / total

    def merged(values: Tensor) -> Tensor:
        out = values[:n_bins].clone()
        out[-1] += values[n_bins]
        return out

    count, conf_sum, acc_sum = merged(count), merged(conf_sum), merged(acc_sum)
    safe = count.clamp_min(1)
    return {
        "bin_edges": edges.double().tolist(),
        "bin_confidence": (conf_sum / safe).tolist(),
        "bin_accuracy": (acc_sum / safe).tolist(),
        "bin_count": [int(c) for c in count.tolist()],
        "ece": ece,
    }


def most_confident_mistakes(probs: Tensor, targets: Tensor, k: int) -> list[int]:
    """Indices of at most `k` wrong predictions, most confident first (ties: lower index)."""
    check_scores(probs, targets)
    confidence, predicted = as_probabilities(probs).max(dim=-1)
    wrong = torch.nonzero(predicted.ne(targets.to(predicted.device))).flatten()
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices
    return wrong[order][: max(k, 0)].tolist()
