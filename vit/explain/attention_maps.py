"""Per-layer and per-head attention: ``attention_maps(model, images, layers, query, heads)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vit.errors import ConfigError
from vit.explain.inputs import (
    Query,
    check_images,
    eval_mode,
    input_grid,
    layer_list,
    model_device,
    query_tokens,
)
from vit.explain.recompute import attention_rows

__all__ = ["attention_maps"]


def attention_maps(
    model: nn.Module, images: torch.Tensor, layers: int | Sequence[int] | None = None,
    query: Query | list[Query] = None, heads: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Attention weights of chosen layers and heads: (B, len(layers), len(heads), Q, N).

    ``layers`` and ``heads``: an index, a list of them, or None for all. ``query``: None for
    every row (Q = N: the full N x N matrices of the chosen layers), or a token index, a
    (row, col) patch, or a list of these (only those rows are computed). Tokens are ordered
    [CLS], registers, then the patches row by row. The forward pass stops at the last layer asked.
    """
    check_images(images)
    depth = len(model.blocks)
    chosen = layer_list(layers, depth)
    num_heads = model.blocks[0].attn.num_heads
    head_list = list(range(num_heads)) if heads is None else [heads] if isinstance(heads, int) \
        else list(heads)
    if not head_list or any(not 0 <= h < num_heads for h in head_list):
        raise ConfigError(f"heads must be indices in [0, {num_heads - 1}]; got {heads!r}")
    x = images.to(model_device(model, images.device))
    tokens_asked = query_tokens(query, model.num_prefix_tokens, input_grid(model, x))
    found: dict[int, torch.Tensor] = {}
    with eval_mode(model), torch.no_grad():
        tokens = model.embed(x)
        for index in range(max(chosen) + 1):
            block = model.blocks[index]
            if index in chosen:
                q, k, _ = block.attn.heads(block.norm1(tokens))
                q = q if tokens_asked is None else q[:, :, tokens_asked]  # (B, heads, Q, hd)
                found[index] = attention_rows(q, k, block.attn.scale, 0, q.shape[2])[:, head_list]
            if index < max(chosen):
                tokens, _ = block(tokens)
    return torch.stack([found[layer] for layer in chosen], dim=1)

