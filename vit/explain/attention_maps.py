"""Per-layer and per-head attention: ``attention_maps(model, images, layers, query, heads)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vit.errors import ConfigError
from vit.explain.adapters import adapter_for
from vit.explain.inputs import Query, check_images, layer_list, model_device, query_tokens
from vit.explain.recompute import attention_of

__all__ = ["attention_maps"]


def attention_maps(
    model: nn.Module, images: torch.Tensor, layers: int | Sequence[int] | None = None,
    query: Query | list[Query] = None, heads: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Attention weights of chosen layers and heads: (B, len(layers), len(heads), Q, N).

    ``layers`` and ``heads``: an index, a list of them, or None for all. ``query``: None for
    every row (Q = N: the full N x N matrices of the chosen layers), or a token index, a
    (row, col) patch, or a list of these (only those rows are computed). Tokens are ordered
    the prefix tokens ([CLS], distillation, registers), then the patches row by row. Each
    layer's attention is the family's own (relative-position bias, RoPE, q/k norms). The forward pass stops at the last layer asked.
    """
    check_images(images)
    adapter = adapter_for(model)
    chosen = layer_list(layers, adapter.depth)
    x = images.to(model_device(model, images.device))
    tokens_asked = query_tokens(query, adapter.num_prefix_tokens, adapter.grid(x))
    found: dict[int, torch.Tensor] = {}
    with adapter.session(), torch.no_grad():
        trace = adapter.trace(x, last=max(chosen), output=False)
        for index in sorted(set(chosen)):
            call = attention_of(adapter, index, trace.inputs[index], trace.kwargs[index])
            head_list = _heads(heads, call.q.shape[1])
            rows = call.probabilities() if tokens_asked is None else torch.cat(
                [call.probabilities(t, t + 1) for t in tokens_asked], dim=2)  # (B, H, Q, N)
            found[index] = rows[:, head_list]
    return torch.stack([found[layer] for layer in chosen], dim=1)


def _heads(heads: int | Sequence[int] | None, num_heads: int) -> list[int]:
    head_list = list(range(num_heads)) if heads is None else [heads] if isinstance(heads, int) \
        else list(heads)
    if not head_list or any(not 0 <= h < num_heads for h in head_list):
        raise ConfigError(f"heads must be indices in [0, {num_heads - 1}]; got {heads!r}")
    return head_list
