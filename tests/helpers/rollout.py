"""The dense reference rollout: the definition, as full N x N products in forward order, to
check the fast paths of vit.explain against."""

from __future__ import annotations

import torch

FUSIONS = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}


def discard_by_sorting(f: torch.Tensor, ratio: float) -> torch.Tensor:
    """Reference thinning, row by row: zero the k smallest off-diagonal entries."""
    f, k = f.clone(), int(f.shape[-1] * ratio)
    for b in range(f.shape[0]):
        for i in range(f.shape[1]):
            others = [j for j in f[b, i].argsort().tolist() if j != i]
            f[b, i, others[:k]] = 0
    return f


def full_rollout(attentions, num_prefix, grid, fusion="mean", discard_ratio=0.0):
    """The definition, as full N x N products in forward order (reference for the fast path)."""
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    r = eye
    for a in attentions:
        m = 0.5 * discard_by_sorting(FUSIONS[fusion](a.double()), discard_ratio) + 0.5 * eye
        r = (m / m.sum(-1, keepdim=True)) @ r
    return r[:, 0, num_prefix:].reshape(-1, *grid)
