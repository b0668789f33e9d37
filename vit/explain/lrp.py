"""AttnLRP (Achtibat et al. 2024, ICML) and CP-LRP: layer-wise relevance of the target logit,
by the attention-aware rules in gradient x input form (as the ``lxt`` library does)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vit.explain.inputs import (
    check_autograd,
    check_choice,
    check_images,
    eval_mode,
    input_grid,
    model_device,
)
from vit.explain.recompute import backward_by_block, forward_keeping_inputs, target_gradient

__all__ = ["LRP_RULES", "attnlrp"]


LRP_RULES = ("attnlrp", "cp")  # in the attention: the paper's rules, or CP-LRP (attention fixed)


def _scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` in the forward pass, ``factor`` times the gradient in the backward pass."""
    return t.detach() + factor * (t - t.detach())


def _attnlrp_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with AttnLRP's rules in gradient x input form: the uniform
    rule halves the relevance at each of the two matrix products (q and k: 1/4, v: 1/2); the
    softmax keeps its own gradient, which is the paper's Proposition 3.1 rule."""
    return F.scaled_dot_product_attention(_scale_grad(q, 0.25), _scale_grad(k, 0.25),
                                          _scale_grad(v, 0.5))


def _cp_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """CP-LRP (Ali et al. 2022): the attention weights are held fixed, relevance flows via v."""
    return F.scaled_dot_product_attention(q.detach(), k.detach(), v)


def _layer_norm_identity(module: nn.LayerNorm, args: tuple, _output: torch.Tensor) -> torch.Tensor:
    """LayerNorm with the standard deviation held fixed (identity rule on the division)."""
    x = args[0]
    centred = x - x.mean(dim=-1, keepdim=True)
    std = (centred.pow(2).mean(dim=-1, keepdim=True) + module.eps).sqrt()
    y = centred / std.detach()
    if module.weight is not None:
        y = y * module.weight
    return y + module.bias if module.bias is not None else y


def _elementwise_identity(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Identity rule: the output's value, with gradient ``f(x) / x`` so relevance passes through."""
    x = args[0]
    ratio = torch.where(x == 0, torch.full_like(x, 0.5), output / x).detach()  # gelu(x)/x -> 1/2
    return output.detach() + (x - x.detach()) * ratio


@contextmanager
def _lrp_rules(model: nn.Module) -> Iterator[None]:
    """AttnLRP's rules for LayerNorm and GELU on this model, for the duration of the block."""
    handles = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            handles.append(module.register_forward_hook(_layer_norm_identity))
        elif isinstance(module, nn.GELU):
            handles.append(module.register_forward_hook(_elementwise_identity))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attnlrp(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, rule: str = "attnlrp"
) -> torch.Tensor:
    """AttnLRP: Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin & Samek 2024,
    "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers" (ICML).

    Relevance of the target logit on each patch: the sum over its pixels and channels of
    ``x * dlogit/dx`` with a modified backward pass that realises the paper's rules (as its
    ``lxt`` library does): linear maps and additions keep their gradient (epsilon rule), GELU
    passes relevance unchanged (identity rule), LayerNorm holds its standard deviation fixed,
    the matrix products in the attention split relevance evenly between their factors (uniform
    rule), and the softmax keeps its gradient (Proposition 3.1). ``rule="cp"`` instead holds the
    attention weights fixed (CP-LRP, Ali et al. 2022), the variant ``lxt`` applies to
    torchvision's ViT. Relevance is conserved from the logit down to the pixels except what the
    biases (linear layers, LayerNorm, position embedding, [CLS]) and the softmax absorb.
    The map is signed: negative patches speak against the class.
    """
    check_images(images)
    check_autograd("attnlrp")
    check_choice("rule", rule, LRP_RULES)
    x = images.detach().to(model_device(model, images.device))
    gh, gw = input_grid(model, x)
    with eval_mode(model):
        with torch.no_grad():
            inputs, output = forward_keeping_inputs(model, model.embed(x))
        with torch.enable_grad(), _lrp_rules(model):
            grad, _ = target_gradient(model, output, target)
            attend = _attnlrp_attend if rule == "attnlrp" else _cp_attend
            grad = backward_by_block(model, inputs, grad, attend=attend)
            pixels = x.clone().requires_grad_(True)
            (grad_pixels,) = torch.autograd.grad(model.embed(pixels), pixels, grad)
        relevance = (x * grad_pixels).sum(dim=1)  # (B, H, W)
        b, h, w = relevance.shape
        return relevance.reshape(b, gh, h // gh, gw, w // gw).sum(dim=(2, 4))  # per patch

