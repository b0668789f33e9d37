"""The tests' reference for rollout: the dense arithmetic on given per-block (B, heads, N, N)
attention tensors, written as the papers state it, with nothing of the package's chunking.

    rollout_from_attentions(attentions, num_prefix_tokens, grid)        # (B, grid_h, grid_w)
    query_rollout_from_attentions(attentions)                           # (B, N, N), every query
    grad_rollout_from_attentions(attentions, gradients, num_prefix_tokens, grid)
    full_rollout(attentions, num_prefix, grid, fusion, discard_ratio)   # (B, grid_h, grid_w)

``full_rollout`` uses nothing of the package (its own head fusion, thinning by sorting, the full
N x N products in forward order): the definition the others are checked against.

Rollout (Abnar & Zuidema 2020) and gradient rollout (Chefer et al. 2021). The package computes
the same maps on a model without holding every layer's attention (``vit.explain.rollout``,
``vit.explain.grad_rollout``); the tests compare the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vit.errors import ConfigError
from vit.explain.rollout import check_rollout_args, discard_lowest, fuse_heads, patch_map

__all__ = ["rollout_from_attentions", "query_rollout_from_attentions",
           "grad_rollout_from_attentions", "full_rollout", "discard_by_sorting", "FUSIONS"]


def _cls_rows(attention: torch.Tensor) -> torch.Tensor:
    """e_0 for every image: (B, N) with a 1 on the [CLS] token."""
    b, n = attention.shape[0], attention.shape[-1]
    row = torch.zeros(b, n, device=attention.device)
    row[:, 0] = 1.0
    return row


def _row_times_heads(row: torch.Tensor, per_head: torch.Tensor) -> torch.Tensor:
    """sum over heads of ``row @ per_head[:, h]``: (B, N) and (B, heads, N, N) -> (B, N).

    One batched vector-matrix product that reads ``per_head`` once.
    """
    b, heads, n, _ = per_head.shape
    rows = row[:, None, :].expand(b, heads, n).reshape(b, 1, heads * n)
    return (rows @ per_head.reshape(b, heads * n, n))[:, 0]


def _dense_rollout_step(
    row: torch.Tensor, attention: torch.Tensor, head_fusion: str, discard_ratio: float
) -> torch.Tensor:
    """``row @ M`` for one block's ``M = rownorm(0.5 * F + 0.5 * I)``, without forming M.

    F is the fused, thinned attention. With the row sums ``s = 0.5 * rowsum(F) + 0.5`` and
    ``w = row / s``: ``row @ M = 0.5 * w @ F + 0.5 * w``.
    """
    if head_fusion == "mean" and discard_ratio == 0.0:
        # The mean over heads commutes with row sums and products: F is never formed either.
        heads = attention.shape[1]
        w = row / (0.5 * attention.sum(dim=-1).mean(dim=1) + 0.5)
        w_times_f = _row_times_heads(w, attention) / heads
    else:
        fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
        w = row / (0.5 * fused.sum(dim=-1) + 0.5)
        w_times_f = (w[:, None, :] @ fused)[:, 0]
    return 0.5 * w_times_f + 0.5 * w


def _check_attentions(attentions: Sequence[torch.Tensor]) -> None:
    if len(attentions) == 0:
        raise ConfigError("need at least one attention tensor, got none")
    for a in attentions:
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ConfigError(f"each attention must be (B, heads, N, N), got {tuple(a.shape)}")


def rollout_from_attentions(
    attentions: Sequence[torch.Tensor],
    num_prefix_tokens: int,
    grid: tuple[int, int],
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> torch.Tensor:
    """Attention rollout of per-block (B, heads, N, N) attentions -> (B, grid_h, grid_w).

    For each block from ``start_layer`` on: fuse the heads, optionally zero the lowest entries
    of each row, add the residual (``0.5 * A + 0.5 * I``), renormalise the rows, and chain.
    """
    _check_attentions(attentions)
    check_rollout_args(head_fusion, discard_ratio, start_layer, depth=len(attentions))

    # R = M_L ... M_1 and only its [CLS] row is kept: e_0^T M_L ... M_1, as vector-matrix
    # products from the last block back, O(N^2) per block instead of O(N^3).
    blocks = attentions[start_layer:]
    row = _cls_rows(blocks[-1])
    for attention in reversed(blocks):
        row = _dense_rollout_step(row, attention.float(), head_fusion, discard_ratio)
    return patch_map(row, num_prefix_tokens, grid)


def grad_rollout_from_attentions(
    attentions: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    num_prefix_tokens: int,
    grid: tuple[int, int],
) -> torch.Tensor:
    """Chefer et al. 2021 rollout -> (B, grid_h, grid_w); ``gradients[l]`` belongs to ``attentions[l]``.

    ``A_bar_l = mean_heads(relu(grad_l * A_l))`` and ``R <- R + A_bar_l @ R`` from ``R = I``.
    """
    _check_attentions(attentions)
    if len(gradients) != len(attentions):
        raise ConfigError(f"got {len(attentions)} attentions but {len(gradients)} gradients")
    # [CLS] row of (I + A_bar_L) ... (I + A_bar_1), from the last block back (see rollout).
    row = _cls_rows(attentions[-1])
    for attention, gradient in zip(reversed(attentions), reversed(gradients), strict=True):
        relevance = (gradient.float() * attention.float()).clamp(min=0)
        row = row + _row_times_heads(row, relevance) / attention.shape[1]
    return patch_map(row, num_prefix_tokens, grid)


def query_rollout_from_attentions(
    attentions: Sequence[torch.Tensor], *, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Full rollout matrices (B, N, N): row q is the rollout from query token q.

    ``M_L @ ... @ M_1`` with ``M = rownorm(0.5 * F + 0.5 * I)`` and ``F`` the fused, thinned
    attention, as ``rollout_from_attentions``, whose [CLS] map is row 0 here.
    """
    n = attentions[0].shape[-1]
    eye = torch.eye(n, device=attentions[0].device)
    result = eye.expand(attentions[0].shape[0], n, n).clone()
    for attention in reversed(attentions):
        fused = discard_lowest(fuse_heads(attention.float(), head_fusion), discard_ratio)
        step = 0.5 * fused + 0.5 * eye
        result = result @ (step / step.sum(dim=-1, keepdim=True))
    return result


# --- the definition, independent of the package ------------------------------------------------

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
