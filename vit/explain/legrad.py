"""LeGrad (Bousselham et al. 2024): each layer's own score's gradient on its attention."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit.explain.adapters import Adapter, adapter_for
from vit.explain.attention_calls import AttentionCall, intercept, record
from vit.explain.inputs import (
    check_autograd,
    check_choice,
    check_images,
    check_layer_index,
    model_device,
    resolve_target,
)
from vit.explain.recompute import chunk_rows, chunks
from vit.explain.rollout import patch_map

__all__ = ["LEGRAD_POOLS", "legrad"]


LEGRAD_POOLS = ("mean", "model")


def _layer_score(adapter: Adapter, tokens: torch.Tensor, classes: torch.Tensor, pool: str
                 ) -> torch.Tensor:
    """The target logit read from one layer's output tokens (B, N, D), summed over images.
    ``mean``: every token replaced by the mean of all tokens, so whatever the model pools
    ([CLS], the patch mean, an attention pool) it reads that mean through its final norm and
    head; ``model``: the model's own pooling."""
    if pool == "mean":
        tokens = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
    return adapter.logits(tokens).gather(1, classes[:, None]).sum()


def _positive_gradient_columns(call: AttentionCall, d_out: torch.Tensor,
                               chunk_size: int | None) -> torch.Tensor:
    """``sum over heads and rows of relu(dA)``, dA = dO V^T, a chunk of rows at a time: (B, N)."""
    v = call.v
    total = v.new_zeros(v.shape[0], v.shape[2])
    for start, stop in chunks(v.shape[2], chunk_rows(call, chunk_size)):
        grad_a = d_out[:, :, start:stop] @ v.transpose(-2, -1)  # (B, heads, C, N)
        total += grad_a.clamp(min=0).sum(dim=(1, 2))
    return total


def legrad(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, start_layer: int = 0,
    pool: str = "mean", chunk_size: int | None = None,
) -> torch.Tensor:
    """LeGrad: Bousselham, Boggust, Chaybouti, Strobelt & Kuehne 2024, "LeGrad: An
    Explainability Method for Vision Transformers via Feature Formation Sensitivity".

    For each layer l from ``start_layer``: read the target score ``s_l`` off that layer's output
    tokens with the model's final norm and head, take the gradient of ``s_l`` with respect to
    layer l's own attention map, ``relu``, and average over heads and query rows; the map is the
    mean over layers, on the patch columns. ``pool="mean"`` pools the layer's tokens by their
    mean before the norm and head, as the authors' code does (WalBouss/LeGrad,
    ``compute_legrad_clip``); ``"model"`` uses the model's own pooling. The authors' wrapper
    starts at the second-to-last layer by default; the paper aggregates all layers (our default).

    ``s_l`` depends on layer l's attention only through block l, so each block runs once more
    from its input kept by one fused forward pass, with one backward pass per block through
    that block and the head.
    """
    check_images(images)
    check_autograd("legrad")
    adapter = adapter_for(model)
    adapter.require_head("legrad")
    check_layer_index("start_layer", start_layer, adapter.depth, allow_negative=False)
    check_choice("pool", pool, LEGRAD_POOLS)
    x = images.detach().to(model_device(model, images.device))
    grid = adapter.grid(x)
    with adapter.session():
        with torch.no_grad():
            trace = adapter.trace(x, first=start_layer)
            classes = resolve_target(target, adapter.logits(trace.output))
        total = x.new_zeros(trace.output.shape[:2])  # (B, N)
        for layer in range(start_layer, adapter.depth):
            seen: dict[str, Any] = {}
            with torch.enable_grad():
                tokens = trace.inputs[layer - start_layer].detach().requires_grad_(True)
                with intercept(record(seen)):  # the block's attention, not an attention pool's
                    out = adapter.run_block(layer, tokens, trace.kwargs[layer])
                score = _layer_score(adapter, out, classes, pool)
                (d_out,) = torch.autograd.grad(score, seen["out"])
            with torch.no_grad():
                heads, n = d_out.shape[1], d_out.shape[2]
                total += _positive_gradient_columns(seen["call"], d_out, chunk_size) / (heads * n)
        return patch_map(total / (adapter.depth - start_layer), adapter.num_prefix_tokens, grid)
