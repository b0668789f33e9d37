"""Splits, class balance and the data report: pure functions of the sample lists."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vit.data.folders import Sample
from vit.errors import ConfigError

__all__ = [
    "stratified_split",
    "class_counts",
    "balanced_class_weights",
    "build_data_report",
]

logger = logging.getLogger(__name__)


def stratified_split(
    targets: Sequence[int], *, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices per class into ``(train_idx, val_idx)``, both sorted.

    Each class with at least 2 images gets ``round(n * val_fraction)`` validation images,
    at least 1 and at most ``n - 1``; a class with 1 image stays in train. The split of a class
    depends only on ``seed``, the class id and the positions of that class's images.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not (
        0.0 < val_fraction < 1.0
    ):
        raise ConfigError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    labels = np.asarray(targets, dtype=np.int64)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if len(idx) < 2:
            logger.warning("Class %d has only %d image; it is not in the validation set",
                           int(cls), len(idx))
            train_idx.extend(idx.tolist())
            continue
        n_val = min(max(round(len(idx) * val_fraction), 1), len(idx) - 1)
        shuffled = np.random.default_rng([seed, int(cls)]).permutation(idx)
        val_idx.extend(shuffled[:n_val].tolist())
        train_idx.extend(shuffled[n_val:].tolist())
    return sorted(train_idx), sorted(val_idx)


def class_counts(targets: Sequence[int], num_classes: int) -> list[int]:
    """Number of samples per class id ``0 .. num_classes - 1``."""
    labels = np.asarray(targets, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes).tolist()


def balanced_class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Loss weights ``n_samples / (n_classes * count)``; 0 for a class without samples."""
    counts = torch.tensor(class_counts(targets, num_classes), dtype=torch.float32)
    weights = len(targets) / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


def _split_summary(classes: Sequence[str], samples: Sequence[Sample]) -> dict[str, Any]:
    counts = class_counts([t for _, t in samples], len(classes))
    return {"images": len(samples), "per_class": dict(zip(classes, counts, strict=True))}


def build_data_report(
    classes: Sequence[str],
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample] | None,
    skipped: Sequence[dict[str, str]],
    ignored_files: Sequence[str] | int,
) -> dict[str, Any]:
    """A JSON-serialisable summary: classes, per-class counts, skipped and ignored files."""
    train = _split_summary(classes, train_samples)
    nonzero = [c for c in train["per_class"].values() if c > 0]
    ignored_list = [] if isinstance(ignored_files, int) else [str(p) for p in ignored_files]
    return {
        "classes": list(classes),
        "num_classes": len(classes),
        "train": train,
        "val": None if val_samples is None else _split_summary(classes, val_samples),
        "imbalance_ratio": max(nonzero) / min(nonzero) if nonzero else None,
        "skipped": [{"path": str(s["path"]), "reason": str(s["reason"])} for s in skipped],
        "num_skipped": len(skipped),
        "num_ignored_files": ignored_files if isinstance(ignored_files, int)
        else len(ignored_list),
        "ignored_files_examples": ignored_list[:20],
    }
