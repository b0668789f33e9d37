"""Attention rollout (the one implementation) and one layer's attention row, on a model, in
memory linear in the tokens; the head fusion and the patch map the other methods share.

    rollout(model, images, query=None)    # Abnar & Zuidema 2020, from [CLS] or any query token
    rollout_rows(model, images)           # (B, N, N): the rollout from every token (the explorer)
    attention(model, images, layer=-1)    # one layer's attention row (the raw-attention baseline)

Rollout wants the query row of ``M_L ... M_1``: the forward pass keeps each block's input, then,
last block first, q and k are recomputed and the row is multiplied by ``softmax(q K^T / sqrt(d))``
in chunks of query rows (``r @ A = sum_i r_i A[i]``); going from the last layer to the first
keeps the product exact. The tests compare it with the dense product of given attention
tensors (``tests/helpers/rollout_reference.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from vit.errors import ConfigError
from vit.explain.adapters import Adapter, adapter_for
from vit.explain.attention_calls import AttentionCall
from vit.explain.inputs import (
    Query,
    check_choice,
    check_images,
    check_layer_index,
    model_device,
    query_token,
)
from vit.explain.recompute import attention_of, chunk_rows, chunks, one_hot_rows

__all__ = ["HEAD_FUSIONS", "rollout", "rollout_rows", "attention", "fuse_heads",
           "discard_lowest", "patch_map", "check_rollout_args", "start_row"]

HEAD_FUSIONS = ("mean", "max", "min")


def check_rollout_args(head_fusion: str, discard_ratio: float, start_layer: int, depth: int) -> None:
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard_ratio must be in [0, 1); got {discard_ratio}")
    check_layer_index("start_layer", start_layer, depth, allow_negative=False)


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, heads, ..., N) -> (B, ..., N): mean, max or min over the heads."""
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def patch_map(row: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N) row over the tokens -> (B, grid_h, grid_w) weights on the patch tokens (prefix
    tokens dropped)."""
    gh, gw = grid
    n = row.shape[-1]
    if n != num_prefix_tokens + gh * gw:
        raise ConfigError(
            f"attention over {n} tokens does not match {num_prefix_tokens} prefix tokens plus a "
            f"{gh}x{gw} grid of patches ({num_prefix_tokens + gh * gw} tokens)"
        )
    return row[:, num_prefix_tokens:].reshape(-1, gh, gw)


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the ``int(N * discard_ratio)`` smallest entries of each row of a (B, N, N) fused
    attention; never the diagonal."""
    return _discard_lowest_rows(fused, int(fused.shape[-1] * discard_ratio), first_row=0)


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
    rows: torch.Tensor, call: AttentionCall, *, head_fusion: str, discard_ratio: float,
    chunk_size: int | None,
) -> torch.Tensor:
    """``rows @ M`` for (B, R, N) rows and one block's ``M = rownorm(0.5 * F + 0.5 * I)``, F the
    fused, thinned attention, formed ``chunk`` rows of M at a time. With ``w = rows /
    rowsum(0.5 F + 0.5 I)``: ``rows @ M = 0.5 * w @ F + 0.5 * w``; columns where every row is 0
    are skipped."""
    n = call.q.shape[2]
    chunk = chunk_rows(call, chunk_size)
    discard = int(n * discard_ratio)
    w = torch.zeros_like(rows)
    w_times_f = torch.zeros_like(rows)
    for start, stop in chunks(n, chunk):
        if not rows[..., start:stop].any():
            continue
        fused = fuse_heads(call.probabilities(start, stop), head_fusion)  # (B, C, N)
        fused = _discard_lowest_rows(fused, discard, start)
        w[..., start:stop] = rows[..., start:stop] / (0.5 * fused.sum(dim=-1) + 0.5)[:, None]
        w_times_f += w[..., start:stop] @ fused  # (B, R, C) @ (B, C, N)
    return 0.5 * w_times_f + 0.5 * w


def _needs_output(adapter: Adapter, query: Query) -> bool:
    """Whether the start row depends on the last tokens (pooling other than by fixed tokens)."""
    return query is None and adapter.pool not in ("token", "distilled")


def start_row(adapter: Adapter, query: Query, tokens: torch.Tensor, grid: tuple[int, int]
              ) -> torch.Tensor:
    """(B, N): the row rollout starts from. ``query`` None: the pooled feature
    (``Adapter.pool_row``: [CLS] for class-token models); a token index or (row, col) patch:
    that token alone."""
    if query is None:
        return adapter.pool_row(tokens)
    token = query_token(query, adapter.num_prefix_tokens, grid)
    return one_hot_rows(tokens.shape[0], tokens.shape[1], token, tokens.device)


def _rolled_out(
    model: nn.Module, images: torch.Tensor, *, query: Query, every_token: bool,
    head_fusion: str, discard_ratio: float, start_layer: int, chunk_size: int | None,
) -> tuple[torch.Tensor, Adapter, tuple[int, int]]:
    """(B, R, N): the start rows (``query``'s, or with ``every_token`` one per token, R = N)
    times ``M_L ... M_start``; the model's adapter and its patch grid."""
    check_images(images)
    adapter = adapter_for(model)
    check_rollout_args(head_fusion, discard_ratio, start_layer, adapter.depth)
    x = images.to(model_device(model, images.device))
    grid = adapter.grid(x)
    with adapter.session(), torch.no_grad():
        needs_output = not every_token and _needs_output(adapter, query)
        trace = adapter.trace(x, first=start_layer, output=needs_output)
        tokens = trace.inputs[-1] if trace.output is None else trace.output  # (B, N, D)
        if every_token:
            rows = torch.eye(tokens.shape[1], device=tokens.device).expand(
                tokens.shape[0], -1, -1).clone()  # (B, N, N)
        else:
            rows = start_row(adapter, query, tokens, grid)[:, None, :]  # (B, 1, N)
        for layer in reversed(range(start_layer, adapter.depth)):  # r M_L first, then M_(L-1)..
            call = attention_of(adapter, layer, trace.inputs.pop(), trace.kwargs[layer])
            rows = _rollout_step(rows, call, head_fusion=head_fusion,
                                 discard_ratio=discard_ratio, chunk_size=chunk_size)
    return rows, adapter, grid


def rollout(
    model: nn.Module, images: torch.Tensor, *, query: Query = None, head_fusion: str = "mean",
    discard_ratio: float = 0.0, start_layer: int = 0, chunk_size: int | None = None,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

    Per block from ``start_layer``: heads fused (mean, max or min), optionally the
    ``int(N * discard_ratio)`` smallest entries of each row zeroed (never the diagonal; as in
    jacobgil/vit-explain), ``0.5 * A + 0.5 * I``, rows renormalised; the blocks' matrices are
    multiplied in forward order, ``R = M_L ... M_start``, and the map is ``r R`` on the patch
    tokens, ``r`` the pooled feature's row (``start_row``: [CLS], the patch mean, the
    attention pool's weights) or the ``query`` token's. A is each block's attention as its
    family computes it (relative-position bias, RoPE, q/k norms). It does not depend on the
    class. Cost: one forward pass plus each block's q and k once more.
    """
    rows, adapter, grid = _rolled_out(
        model, images, query=query, every_token=False, head_fusion=head_fusion,
        discard_ratio=discard_ratio, start_layer=start_layer, chunk_size=chunk_size)
    return patch_map(rows[:, 0], adapter.num_prefix_tokens, grid)


def rollout_rows(
    model: nn.Module, images: torch.Tensor, *, head_fusion: str = "mean",
    discard_ratio: float = 0.0, start_layer: int = 0, chunk_size: int | None = None,
) -> torch.Tensor:
    """(B, N, N), N all tokens, prefix included: row q is the rollout from query token q over
    every token (``rollout(..., query=q)`` is its patch part), as the explorer page shows it.
    Cost: ``rollout``'s, with each block's matrix applied to N rows instead of one."""
    rows, _, _ = _rolled_out(
        model, images, query=None, every_token=True, head_fusion=head_fusion,
        discard_ratio=discard_ratio, start_layer=start_layer, chunk_size=chunk_size)
    return rows


def attention(
    model: nn.Module, images: torch.Tensor, *, layer: int = -1, head_fusion: str = "mean",
    query: Query = None,
) -> torch.Tensor:
    """One layer's attention row of the pooled feature (``start_row``: [CLS] for class-token
    models) or of ``query``, heads fused, on the patches: the raw-attention baseline of the
    rollout literature (e.g. Abnar & Zuidema 2020). For a pooled feature that reads several
    tokens (patch mean, attention pool) the row is the same mixture of their rows. The
    forward pass stops at that layer, unless the pooled feature needs the last tokens.
    """
    check_images(images)
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    adapter = adapter_for(model)
    check_layer_index("layer", layer, adapter.depth, allow_negative=True)
    layer = layer % adapter.depth
    x = images.to(model_device(model, images.device))
    grid = adapter.grid(x)
    with adapter.session(), torch.no_grad():
        needs_output = _needs_output(adapter, query)
        trace = adapter.trace(x, first=layer, last=None if needs_output else layer,
                              output=needs_output)
        weights = start_row(adapter, query, trace.output if needs_output else trace.inputs[-1],
                            grid)  # (B, N)
        call = attention_of(adapter, layer, trace.inputs[0], trace.kwargs[layer])
        rows = torch.stack([(weights[:, None, start:stop, None] * call.probabilities(
            start, stop)).sum(dim=2) for start, stop in chunks(weights.shape[1], 64)
            if weights[:, start:stop].any()]).sum(dim=0)  # (B, heads, N)
        return patch_map(fuse_heads(rows, head_fusion), adapter.num_prefix_tokens, grid)
