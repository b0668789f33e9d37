"""Attention rollout and one layer's attention row, on a model, in memory linear in the tokens.

    rollout(model, images, query=None)    # Abnar & Zuidema 2020, from [CLS] or any query token
    attention(model, images, layer=-1)    # one layer's attention row (the raw-attention baseline)

Rollout wants the query row of ``M_L ... M_1``: the forward pass keeps each block's input, then,
last block first, q and k are recomputed and the row is multiplied by ``softmax(q K^T / sqrt(d))``
in chunks of query rows (``r @ A = sum_i r_i A[i]``); going from the last layer to the first
keeps the product exact. ``vit.explain.rollout`` does the same arithmetic on given attention
tensors (the reference the tests compare with).
"""

from __future__ import annotations

import torch
from torch import nn

from vit.explain.inputs import (
    Query,
    check_choice,
    check_images,
    check_layer_index,
    eval_mode,
    input_grid,
    model_device,
    query_token,
)
from vit.explain.recompute import attention_rows, chunk_rows, chunks, layer_inputs, one_hot_rows
from vit.explain.rollout import HEAD_FUSIONS, check_rollout_args, fuse_heads, patch_map

__all__ = ["rollout", "attention"]


def _discard_lowest_rows(fused: torch.Tensor, k: int, first_row: int) -> torch.Tensor:
    """Zero the k smallest entries of each row of a (B, C, N) chunk whose rows are the tokens
    first_row, first_row + 1, ...; a row's own token (the diagonal) is never zeroed."""
    if k == 0:
        return fused
    c, n = fused.shape[-2:]
    rows = torch.arange(first_row, first_row + c, device=fused.device)
    diagonal = rows[:, None] == torch.arange(n, device=fused.device)[None, :]  # (C, N)
    lowest = fused.masked_fill(diagonal, float("inf")).topk(k, dim=-1, largest=False).indices
    return fused.scatter(-1, lowest, 0.0)


def _rollout_step(
    row: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, *, head_fusion: str,
    discard_ratio: float, chunk: int,
) -> torch.Tensor:
    """``row @ M`` for one block's ``M = rownorm(0.5 * F + 0.5 * I)``, F the fused, thinned
    attention, formed ``chunk`` rows at a time. With ``w = row / rowsum(0.5 F + 0.5 I)``:
    ``row @ M = 0.5 * w @ F + 0.5 * w``; rows where ``row`` is 0 are skipped."""
    n = q.shape[2]
    discard = int(n * discard_ratio)
    w = torch.zeros_like(row)
    w_times_f = torch.zeros_like(row)
    for start, stop in chunks(n, chunk):
        if not row[:, start:stop].any():
            continue
        fused = fuse_heads(attention_rows(q, k, scale, start, stop), head_fusion)  # (B, C, N)
        fused = _discard_lowest_rows(fused, discard, start)
        w[:, start:stop] = row[:, start:stop] / (0.5 * fused.sum(dim=-1) + 0.5)
        w_times_f += (w[:, None, start:stop] @ fused)[:, 0]
    return 0.5 * w_times_f + 0.5 * w


def rollout(
    model: nn.Module, images: torch.Tensor, *, query: Query = None, head_fusion: str = "mean",
    discard_ratio: float = 0.0, start_layer: int = 0, chunk_size: int | None = None,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

    Per block from ``start_layer`` on: heads fused (mean, max or min), optionally the
    ``int(N * discard_ratio)`` smallest entries of each row zeroed (never the diagonal; as in
    jacobgil/vit-explain), ``0.5 * A + 0.5 * I``, rows renormalised; the blocks' matrices are
    multiplied in forward order, ``R = M_L ... M_start``, and the map is R's row of ``query``
    ([CLS] by default; any token index or (row, col) patch) on the patch tokens.
    It does not depend on the class. Cost: one forward pass plus q K^T once per block.
    """
    check_images(images)
    depth = len(model.blocks)
    check_rollout_args(head_fusion, discard_ratio, start_layer, depth)
    chunk = chunk_rows(model, chunk_size)
    x = images.to(model_device(model, images.device))
    grid = input_grid(model, x)
    token = query_token(query, model.num_prefix_tokens, grid)
    with eval_mode(model), torch.no_grad():
        tokens = model.embed(x)  # (B, N, D)
        inputs = layer_inputs(model, tokens, start_layer, depth - 1)  # last block: not run
        row = one_hot_rows(x.shape[0], tokens.shape[1], token, tokens.device)
        for layer in reversed(range(start_layer, depth)):  # e_q^T M_L first, then M_(L-1), ...
            block = model.blocks[layer]
            q, k, _ = block.attn.heads(block.norm1(inputs.pop()))
            row = _rollout_step(row, q, k, block.attn.scale, head_fusion=head_fusion,
                                discard_ratio=discard_ratio, chunk=chunk)
        return patch_map(row, model.num_prefix_tokens, grid)


def attention(
    model: nn.Module, images: torch.Tensor, *, layer: int = -1, head_fusion: str = "mean",
    query: Query = None,
) -> torch.Tensor:
    """One layer's attention row of ``query`` ([CLS] by default), heads fused, on the patches.

    The raw-attention baseline of the rollout literature (e.g. Abnar & Zuidema 2020): only one
    row of one layer is computed, after a fused forward pass up to that layer.
    """
    check_images(images)
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    depth = len(model.blocks)
    check_layer_index("layer", layer, depth, allow_negative=True)
    layer = layer % depth
    x = images.to(model_device(model, images.device))
    grid = input_grid(model, x)
    token = query_token(query, model.num_prefix_tokens, grid)
    with eval_mode(model), torch.no_grad():
        (tokens,) = layer_inputs(model, model.embed(x), layer, layer)
        block = model.blocks[layer]
        q, k, _ = block.attn.heads(block.norm1(tokens))
        rows = attention_rows(q, k, block.attn.scale, token, token + 1)[:, :, 0]  # (B, heads, N)
        return patch_map(fuse_heads(rows, head_fusion), model.num_prefix_tokens, grid)

