"""Every saliency method behind one batched call, and the older names for three of them.

    saliency(model, images, method="legrad", target=None, **options)    # (B, grid_h, grid_w)

``method`` is one of ``METHODS``: the names of ``vit.explain.catalog``, where each method is
listed once, with what it computes, its paper and the function behind it.

``model`` is this package's ViT or a timm ViT-family model as it is (``vit.explain.adapters``:
ViT, DeiT, EVA-02, DINOv2/v3, SigLIP, BEiT, ...). A map covers the patch tokens only (registers,
[CLS] and [DIST] left out), on the grid of the input size, which may differ from the trained
size and need not be square. Rollout and attention start from the pooled feature's row: [CLS]
for class-token models, else what the model pools (the patch mean, an attention pool). ``target`` (class-specific
methods: ``CLASS_SPECIFIC``) is None for the predicted class, an int, or a (B,) tensor.
The model stays as trained (fused attention); every call runs in eval mode and full precision,
whatever autocast surrounds it, with memory linear in the tokens (``vit.explain.recompute``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

import torch
from torch import nn

from vit.errors import ConfigError
from vit.explain.catalog import CATALOG, DEFAULT_METHOD, Method
from vit.explain.grad_rollout import grad_rollout
from vit.explain.inputs import check_choice, eval_mode
from vit.explain.rollout import attention, rollout

__all__ = [
    "METHODS",
    "CLASS_SPECIFIC",
    "DEFAULT_METHOD",
    "saliency",
    "explain",
    "attention_rollout",
    "gradient_rollout",
    "raw_attention",
    "zero_head_warning",
]


def _implementation(method: Method) -> Callable[..., torch.Tensor]:
    """The function behind a catalog entry (``module:function`` of a module of vit/explain/)."""
    module, function = method.function.split(":")
    return getattr(import_module(f"vit.explain.{module}"), function)


_REGISTRY: dict[str, Callable[..., torch.Tensor]] = {m.name: _implementation(m) for m in CATALOG}

METHODS = tuple(_REGISTRY)

CLASS_SPECIFIC = tuple(m.name for m in CATALOG if m.class_specific)


def _check_options(method: str, options: dict[str, Any]) -> None:
    accepted = [name for name, p in inspect.signature(_REGISTRY[method]).parameters.items()
                if p.kind == p.KEYWORD_ONLY and name != "target"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"{method} takes no option {', '.join(unknown)}; its options: "
                          f"{', '.join(accepted) or 'none'}")


def saliency(
    model: nn.Module, images: torch.Tensor, method: str = DEFAULT_METHOD, target: Any = None,
    **options: Any,
) -> torch.Tensor:
    """Saliency maps (B, grid_h, grid_w) of a batch by ``method`` (one of ``METHODS``).

    ``target``: the class to explain for the class-specific methods (None: the predicted
    class; an int; or a (B,) tensor); rollout and attention do not depend on it and ignore it.
    ``options`` go to the method (e.g. ``head_fusion`` for rollout, ``rule`` for attnlrp).
    """
    check_choice("method", method, METHODS)
    _check_options(method, options)
    if method in CLASS_SPECIFIC:
        return _REGISTRY[method](model, images, target=target, **options)
    return _REGISTRY[method](model, images, **options)


def zero_head_warning(model: torch.nn.Module, methods: Sequence[str]) -> str | None:
    """Why the gradient methods' maps of a model with an all-zero classification head (a freshly
    created one) are zero; None when the head is trained or no such method is asked for."""
    weight = getattr(getattr(model, "head", None), "weight", None)
    gradient = [m for m in methods if m in CLASS_SPECIFIC]
    if weight is None or not gradient or bool(weight.detach().abs().sum() > 0):
        return None
    return (f"the model's classification head is all zeros (a freshly created, untrained "
            f"head): every class scores the same, and {', '.join(gradient)} follow the class "
            "score's gradient, which is zero, so their maps are zero (drawn dark); train the "
            "model, or load trained weights, first")


# ---------------------------------------------------------------------------------------------
# The older names: the same maps, and optionally the logits of the model on the same images
# ---------------------------------------------------------------------------------------------

Maps = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _with_logits(model: nn.Module, images: torch.Tensor, maps: torch.Tensor,
                 return_logits: bool) -> Maps:
    if not return_logits:
        return maps
    with eval_mode(model), torch.no_grad():
        logits = model(images.to(maps.device))
    return maps, logits


def explain(
    model: nn.Module, images: torch.Tensor, *, method: str = DEFAULT_METHOD,
    return_logits: bool = False, **kwargs: Any,
) -> Maps:
    """``saliency(model, images, method, **kwargs)``; with ``return_logits`` also the
    (B, num_classes) logits of the model on the same images (one more forward pass)."""
    return _with_logits(model, images, saliency(model, images, method, **kwargs), return_logits)


def attention_rollout(
    model: nn.Module, images: torch.Tensor, *, head_fusion: str = "mean",
    discard_ratio: float = 0.0, start_layer: int = 0, return_logits: bool = False,
) -> Maps:
    """Attention rollout (Abnar & Zuidema 2020) of the [CLS] token: ``saliency(..., "rollout")``."""
    maps = rollout(model, images, head_fusion=head_fusion, discard_ratio=discard_ratio,
                   start_layer=start_layer)
    return _with_logits(model, images, maps, return_logits)


def gradient_rollout(
    model: nn.Module, images: torch.Tensor, *, target: int | torch.Tensor | None = None,
    return_logits: bool = False,
) -> Maps:
    """Gradient-weighted rollout (Chefer et al. 2021) for ``target`` (default: predicted class):
    ``saliency(..., "grad-rollout")``; parameters' ``.grad`` are left untouched."""
    return _with_logits(model, images, grad_rollout(model, images, target=target), return_logits)


def raw_attention(
    model: nn.Module, images: torch.Tensor, *, layer: int = -1, head_fusion: str = "mean",
    return_logits: bool = False,
) -> Maps:
    """One layer's head-fused [CLS] attention on the patches: ``saliency(..., "attention")``."""
    maps = attention(model, images, layer=layer, head_fusion=head_fusion)
    return _with_logits(model, images, maps, return_logits)
