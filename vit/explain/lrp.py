"""AttnLRP (Achtibat et al. 2024, ICML) and CP-LRP: layer-wise relevance of the target logit,
by the attention-aware rules in gradient x input form (as the ``lxt`` library does)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from vit.errors import ConfigError
from vit.explain.adapters import adapter_for
from vit.explain.attention_calls import AttentionCall, intercept
from vit.explain.inputs import check_autograd, check_choice, check_images, model_device
from vit.explain.recompute import backward_by_block, target_gradient

__all__ = ["LRP_RULES", "attnlrp"]


LRP_RULES = ("attnlrp", "cp")  # in the attention: the paper's rules, or CP-LRP (attention fixed)


def _scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` in the forward pass, ``factor`` times the gradient in the backward pass."""
    return t.detach() + factor * (t - t.detach())


def _attnlrp_attend(call: AttentionCall) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with AttnLRP's rules in gradient x input form: the
    uniform rule halves the relevance at each product of two input-dependent factors (q k^T,
    then A v: q and k 1/4, v 1/2 in self-attention), the softmax keeps its own gradient (the
    paper's Proposition 3.1 rule). A factor that does not depend on the input (an attention
    pool's learned query) is a weight: the other factor keeps the whole relevance."""
    q, k, v = call.q, call.k, call.v
    qk = 0.5 if q.requires_grad and k.requires_grad else 1.0
    av = 0.5 if (q.requires_grad or k.requires_grad) and v.requires_grad else 1.0
    return call.attend(_scale_grad(q, qk * av), _scale_grad(k, qk * av), _scale_grad(v, av))


def _cp_attend(call: AttentionCall) -> torch.Tensor:
    """CP-LRP (Ali et al. 2022): the attention weights are held fixed, relevance flows via v."""
    return call.attend(call.q.detach(), call.k.detach(), call.v)


def _layer_norm_rule(module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """LayerNorm with the standard deviation held fixed (identity rule on the division)."""
    x = args[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = (centred.pow(2).mean(dim=dims, keepdim=True) + module.eps).sqrt()
    y = centred / std.detach()
    if module.weight is not None:
        y = y * module.weight
    y = y + module.bias if module.bias is not None else y
    return output.detach() + (y - y.detach())  # the model's value, the rule's gradient


def _elementwise_rule(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """The output's value with gradient ``f(x) / x``: the identity rule of an activation (GELU,
    SiLU, QuickGELU: relevance passes unchanged) and, for a norm that only rescales (RMSNorm),
    its scale held fixed."""
    x = args[0]
    ratio = torch.where(x == 0, torch.full_like(x, 0.5), output / x).detach()  # gelu(x)/x -> 1/2
    return output.detach() + (x - x.detach()) * ratio


def _rule_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(LayerNorms over the last dims, modules with an elementwise rule): torch's, and timm's
    once timm is imported (its activations and RMS norms are modules of its own)."""
    centring: tuple[type, ...] = (nn.LayerNorm,)
    elementwise: list[type] = [nn.GELU, nn.SiLU, nn.ReLU, nn.Mish, nn.Hardswish]
    if hasattr(nn, "RMSNorm"):
        elementwise.append(nn.RMSNorm)
    if "timm" in sys.modules:
        from timm.layers import activations, norm

        elementwise += [activations.GELU, activations.GELUTanh, activations.QuickGELU,
                        activations.Swish, activations.Mish, activations.HardSwish,
                        norm.RmsNorm, norm.RmsNormFp32, norm.SimpleNorm, norm.SimpleNormFp32]
    return centring, tuple(elementwise)


def _channel_first(module: nn.Module) -> bool:
    name = type(module).__name__  # timm's LayerNorm2d, RmsNorm2d, ...
    return "Norm" in name and name.endswith(("2d", "2dFp32"))


@contextmanager
def _lrp_rules(model: nn.Module) -> Iterator[None]:
    """AttnLRP's rules for the norms and activations of this model, for the block's duration;
    products of two input-dependent tensors (SwiGLU, gates) by ``_ProductRule``."""
    centring, elementwise = _rule_classes()
    handles = []
    for module in model.modules():
        if _channel_first(module):
            raise ConfigError(f"AttnLRP has no rule for the channel-first "
                              f"{type(module).__name__} of this model")
        if isinstance(module, centring):
            handles.append(module.register_forward_hook(_layer_norm_rule))
        elif isinstance(module, elementwise):
            handles.append(module.register_forward_hook(_elementwise_rule))
    try:
        with _ProductRule():
            yield
    finally:
        for handle in handles:
            handle.remove()


_PRODUCTS = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}


class _ProductRule(TorchFunctionMode):
    """AttnLRP's uniform rule on an elementwise product of two input-dependent tensors (the
    gate of SwiGLU, a gated attention): each factor gets half the relevance. Parameters are
    frozen during an explanation, so "requires grad" means "depends on the input"."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        if func in _PRODUCTS and len(args) == 2 and not kwargs and all(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return _scale_grad(args[0], 0.5) * _scale_grad(args[1], 0.5)
        return func(*args, **(kwargs or {}))


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
    adapter = adapter_for(model)
    x = images.detach().to(model_device(model, images.device))
    gh, gw = adapter.grid(x)
    with adapter.session():
        with torch.no_grad():
            trace = adapter.trace(x)
        with torch.enable_grad(), _lrp_rules(model):
            attend = _attnlrp_attend if rule == "attnlrp" else _cp_attend
            with intercept(attend):  # an attention-pool head has the attention's rules too
                grad, _ = target_gradient(adapter, trace.output, target)
            grad = backward_by_block(adapter, trace, grad, attend=attend)
            pixels = x.clone().requires_grad_(True)
            (grad_pixels,) = torch.autograd.grad(adapter.embed(pixels)[0], pixels, grad)
        relevance = (x * grad_pixels).sum(dim=1)  # (B, H, W)
        b, h, w = relevance.shape
        return relevance.reshape(b, gh, h // gh, gw, w // gw).sum(dim=(2, 4))  # per patch
