"""Gradient-weighted attention rollout (Chefer et al. 2021, ICCV), memory linear in the tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit.explain.inputs import check_autograd, check_images, eval_mode, input_grid, model_device
from vit.explain.recompute import (
    attention_rows,
    backward_by_block,
    chunk_rows,
    chunks,
    forward_keeping_inputs,
    fused_attend,
    one_hot_rows,
    target_gradient,
)
from vit.explain.rollout import patch_map

__all__ = ["grad_rollout"]


def _grad_rollout_step(row: torch.Tensor, seen: dict[str, torch.Tensor], d_out: torch.Tensor,
                       scale: float, chunk: int) -> torch.Tensor:
    """``row + row @ mean_heads(relu(dA * A))`` with ``dA = dO V^T``, ``chunk`` rows at a time."""
    q, k, v = seen["q"], seen["k"], seen["v"]
    update = torch.zeros_like(row)
    for start, stop in chunks(q.shape[2], chunk):
        if not row[:, start:stop].any():
            continue
        a = attention_rows(q, k, scale, start, stop)  # (B, heads, C, N)
        grad_a = d_out[:, :, start:stop] @ v.transpose(-2, -1)  # (B, heads, C, N)
        relevance = (grad_a * a).clamp(min=0).mean(dim=1)  # (B, C, N)
        update += (row[:, None, start:stop] @ relevance)[:, 0]
    return row + update


def grad_rollout(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, chunk_size: int | None = None
) -> torch.Tensor:
    """Gradient-weighted attention rollout: Chefer, Gur & Wolf 2021, "Generic
    Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"
    (ICCV), for self-attention: ``A_bar_l = mean_heads(relu(dA_l * A_l))``, ``R <- R + A_bar_l R``
    from ``R = I``; the [CLS] row of R on the patches. dA_l is the gradient of the target logit
    with respect to layer l's attention, each layer paired with its own gradient.

    One forward pass (block inputs kept) and one backward pass recomputed block by block.
    """
    check_images(images)
    check_autograd("grad-rollout")
    chunk = chunk_rows(model, chunk_size)
    x = images.detach().to(model_device(model, images.device))
    grid = input_grid(model, x)
    with eval_mode(model):
        with torch.no_grad():
            inputs, output = forward_keeping_inputs(model, model.embed(x))
        row = one_hot_rows(x.shape[0], output.shape[1], 0, output.device)

        def visit(layer: int, seen: dict[str, torch.Tensor], d_out: torch.Tensor) -> None:
            nonlocal row  # the [CLS] row, right to left: e_0^T (I + A_bar_L) ... (I + A_bar_l)
            with torch.no_grad():
                row = _grad_rollout_step(row, seen, d_out, model.blocks[layer].attn.scale, chunk)

        with torch.enable_grad():
            grad, _ = target_gradient(model, output, target)
            backward_by_block(model, inputs, grad, attend=fused_attend, visit=visit)
        return patch_map(row, model.num_prefix_tokens, grid)

