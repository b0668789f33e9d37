"""Statistics the tests share: two-sample distances (augmentation pipelines compared) and the
relative error of one map or tensor against another (GPU against CPU, under autocast)."""

from __future__ import annotations

import math

import numpy as np
import torch


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between the two CDFs."""
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def ks_threshold(n: int, m: int, alpha: float = 1e-3) -> float:
    """The KS distance two samples of n and m from one distribution exceed with chance alpha."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 on the CPU (``b`` the reference)."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())
