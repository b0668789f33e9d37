"""LeGrad (Bousselham et al. 2024): each layer's own score's gradient on its attention."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit.explain.inputs import (
    check_autograd,
    check_choice,
    check_images,
    check_layer_index,
    eval_mode,
    input_grid,
    model_device,
    resolve_target,
)
from vit.explain.recompute import chunk_rows, chunks, fused_attend, recording
from vit.explain.rollout import patch_map

__all__ = ["LEGRAD_POOLS", "legrad"]


LEGRAD_POOLS = ("mean", "model")


def _layer_score(model: nn.Module, tokens: torch.Tensor, classes: torch.Tensor, pool: str
                 ) -> torch.Tensor:
    """The target logit read from one layer's output tokens (B, N, D), summed over images."""
    if pool == "mean":  # mean of all tokens, then the final norm and the head
        logits = model.head(model.fc_norm(model.norm(tokens.mean(dim=1))))
    else:  # the model's own pooling ([CLS] or the patch mean)
        logits = model.forward_head(model.norm(tokens))
    return logits.gather(1, classes[:, None]).sum()


def _positive_gradient_columns(seen: dict[str, torch.Tensor], d_out: torch.Tensor, chunk: int
                               ) -> torch.Tensor:
    """``sum over heads and rows of relu(dA)``, dA = dO V^T, ``chunk`` rows at a time: (B, N)."""
    v = seen["v"]
    total = v.new_zeros(v.shape[0], v.shape[2])
    for start, stop in chunks(v.shape[2], chunk):
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

    ``s_l`` depends on layer l's attention only through block l, so each block runs once, fused,
    with its input detached, and one backward pass per block through that block and the head.
    """
    check_images(images)
    check_autograd("legrad")
    depth = len(model.blocks)
    check_layer_index("start_layer", start_layer, depth, allow_negative=False)
    check_choice("pool", pool, LEGRAD_POOLS)
    chunk = chunk_rows(model, chunk_size)
    x = images.detach().to(model_device(model, images.device))
    grid = input_grid(model, x)
    with eval_mode(model):
        with torch.no_grad():
            tokens = model.embed(x)
            logits = model(x) if target is None else x.new_zeros(x.shape[0], model.num_classes)
            classes = resolve_target(target, logits)
        total = tokens.new_zeros(tokens.shape[:2])  # (B, N)
        for layer in range(depth):
            block = model.blocks[layer]
            if layer < start_layer:
                with torch.no_grad():
                    tokens, _ = block(tokens)
                continue
            seen: dict[str, torch.Tensor] = {}
            with torch.enable_grad():
                out, _ = block(tokens.detach().requires_grad_(True),
                               attend=recording(fused_attend, seen))
                score = _layer_score(model, out, classes, pool)
                (d_out,) = torch.autograd.grad(score, seen["out"])
            with torch.no_grad():
                heads, n = d_out.shape[1], d_out.shape[2]
                total += _positive_gradient_columns(seen, d_out, chunk) / (heads * n)
            tokens = out.detach()
        return patch_map(total / (depth - start_layer), model.num_prefix_tokens, grid)

