"""AttnLRP (Achtibat et al. 2024, ICML) and CP-LRP: layer-wise relevance of the target logit,
by the attention-aware rules in gradient x input form (as the ``lxt`` library does)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

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


def _layer_norm_rule(x: torch.Tensor, normalized_shape: Any, weight: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.layer_norm`` with the standard deviation held fixed (identity rule on the
    division): the model's value, the rule's gradient. Any module calling it (nn.LayerNorm,
    timm's LayerNorm2d, q/k norms) gets the rule."""
    dims = tuple(range(-len(tuple(normalized_shape)), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    y = centred / (centred.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt().detach()
    y = y if weight is None else y * weight
    y = y if bias is None else y + bias
    value = _LAYER_NORM(x, normalized_shape, weight, bias, eps)
    return value.detach() + (y - y.detach())


def _group_norm_rule(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` (a hybrid's convolutional stem) with its standard deviations fixed."""
    groups = x.reshape(x.shape[0], num_groups, -1)
    centred = groups - groups.mean(dim=-1, keepdim=True)
    y = (centred / (centred.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt().detach()).reshape(
        x.shape)
    channel = (1, -1) + (1,) * (x.ndim - 2)
    y = y if weight is None else y * weight.reshape(channel)
    y = y if bias is None else y + bias.reshape(channel)
    value = _GROUP_NORM(x, num_groups, weight, bias, eps)
    return value.detach() + (y - y.detach())


def _elementwise_rule(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """The output's value with gradient ``f(x) / x``: the identity rule of an activation (GELU,
    SiLU, QuickGELU: relevance passes unchanged) and, for a norm that only rescales (RMSNorm),
    its scale held fixed."""
    x = args[0]
    ratio = torch.where(x == 0, torch.full_like(x, 0.5), output / x).detach()  # gelu(x)/x -> 1/2
    return output.detach() + (x - x.detach()) * ratio


def _elementwise_classes() -> tuple[type, ...]:
    """Modules with the elementwise rule: activations and the norms that only rescale, torch's
    and timm's once timm is imported (its activations and RMS norms are modules of its own,
    some composed of products that the rule then stands in for)."""
    elementwise: list[type] = [nn.GELU, nn.SiLU, nn.ReLU, nn.Mish, nn.Hardswish]
    if hasattr(nn, "RMSNorm"):
        elementwise.append(nn.RMSNorm)
    if "timm" in sys.modules:
        from timm.layers import activations, norm

        elementwise += [activations.GELU, activations.GELUTanh, activations.QuickGELU,
                        activations.Swish, activations.Mish, activations.HardSwish,
                        norm.RmsNorm, norm.RmsNormFp32, norm.RmsNorm2d, norm.RmsNorm2dFp32,
                        norm.SimpleNorm, norm.SimpleNormFp32, norm.SimpleNorm2d,
                        norm.SimpleNorm2dFp32]
    return tuple(elementwise)


@contextmanager
def _lrp_rules(model: nn.Module) -> Iterator[None]:
    """AttnLRP's rules for this model, for the block's duration: the elementwise rule on its
    activations and rescaling norms (module hooks), and by ``_OpRules`` the LayerNorm and
    GroupNorm rules and the uniform rule on products of two input-dependent tensors."""
    elementwise = _elementwise_classes()
    handles = [module.register_forward_hook(_elementwise_rule) for module in model.modules()
               if isinstance(module, elementwise)]
    try:
        with _OpRules():
            yield
    finally:
        for handle in handles:
            handle.remove()


_PRODUCTS = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
_LAYER_NORM, _GROUP_NORM = F.layer_norm, F.group_norm  # as imported
_NORM_RULES = {_LAYER_NORM: _layer_norm_rule, _GROUP_NORM: _group_norm_rule}


class _OpRules(TorchFunctionMode):
    """AttnLRP's rules where they are ops: LayerNorm and GroupNorm with their standard
    deviations fixed, whichever module calls them; the uniform rule on an elementwise product
    of two input-dependent tensors (the gate of SwiGLU, a gated attention), each factor half
    the relevance. Parameters are frozen during an explanation, so "requires grad" means
    "depends on the input". BatchNorm in eval mode is affine: it keeps its gradient."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _NORM_RULES:
            return _NORM_RULES[func](*args, **kwargs)
        if func in _PRODUCTS and len(args) == 2 and not kwargs and all(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return _scale_grad(args[0], 0.5) * _scale_grad(args[1], 0.5)
        return func(*args, **kwargs)


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
    adapter.require_head("attnlrp")
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
