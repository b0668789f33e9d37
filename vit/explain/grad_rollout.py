"""Gradient-weighted attention rollout (Chefer et al. 2021, ICCV), memory linear in the tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit.explain.adapters import adapter_for
from vit.explain.attention_calls import AttentionCall
from vit.explain.inputs import check_autograd, check_images, model_device
from vit.explain.recompute import backward_by_block, chunk_rows, chunks, target_gradient
from vit.explain.rollout import patch_map, start_row

__all__ = ["grad_rollout"]


def _grad_rollout_step(row: torch.Tensor, call: AttentionCall, d_out: torch.Tensor,
                       chunk_size: int | None) -> torch.Tensor:
    """``row + row @ mean_heads(relu(dA * A))`` with ``dA = dO V^T``, a chunk of rows at a time."""
    update = torch.zeros_like(row)
    for start, stop in chunks(call.q.shape[2], chunk_rows(call, chunk_size)):
        if not row[:, start:stop].any():
            continue
        a = call.probabilities(start, stop)  # (B, heads, C, N)
        grad_a = d_out[:, :, start:stop] @ call.v.transpose(-2, -1)  # (B, heads, C, N)
        relevance = (grad_a * a).clamp(min=0).mean(dim=1)  # (B, C, N)
        update += (row[:, None, start:stop] @ relevance)[:, 0]
    return row + update


def grad_rollout(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, chunk_size: int | None = None
) -> torch.Tensor:
    """Gradient-weighted attention rollout: Chefer, Gur & Wolf 2021, "Generic
    Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"
    (ICCV), for self-attention: ``A_bar_l = mean_heads(relu(dA_l * A_l))``, ``R <- R + A_bar_l R``
    from ``R = I``; the row of R of the pooled feature ([CLS] for class-token models:
    ``vit.explain.rollout.start_row``) on the patches. dA_l is the gradient of the target logit
    with respect to layer l's attention, each layer paired with its own gradient.

    One forward pass (block inputs kept) and one backward pass recomputed block by block.
    """
    check_images(images)
    check_autograd("grad-rollout")
    adapter = adapter_for(model)
    adapter.require_head("grad-rollout")
    x = images.detach().to(model_device(model, images.device))
    grid = adapter.grid(x)
    with adapter.session():
        with torch.no_grad():
            trace = adapter.trace(x)
            row = start_row(adapter, None, trace.output, grid)

        def visit(_layer: int, call: AttentionCall, d_out: torch.Tensor) -> None:
            nonlocal row  # the start row, right to left: r (I + A_bar_L) ... (I + A_bar_l)
            with torch.no_grad():
                row = _grad_rollout_step(row, call, d_out, chunk_size)

        with torch.enable_grad():
            grad, _ = target_gradient(adapter, trace.output, target)
            backward_by_block(adapter, trace, grad, visit=visit)
        return patch_map(row, adapter.num_prefix_tokens, grid)
