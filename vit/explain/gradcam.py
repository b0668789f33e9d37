"""Grad-CAM (Selvaraju et al. 2017) on a ViT block's patch tokens, laid out as a grid."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit.explain.adapters import adapter_for
from vit.explain.inputs import check_autograd, check_images, check_layer_index, model_device
from vit.explain.recompute import target_gradient

__all__ = ["gradcam"]


def gradcam(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, layer: int = -1
) -> torch.Tensor:
    """Grad-CAM: Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra 2017, "Grad-CAM: Visual
    Explanations from Deep Networks via Gradient-based Localization" (ICCV).

    On the tokens leaving block ``layer``'s first LayerNorm (``blocks[-1].norm1`` by default,
    the layer pytorch-grad-cam's ViT example uses: the last block's own output reaches the logit
    only through [CLS]), with the patch tokens laid out as a grid like its ``reshape_transform``:
    channel weights = the gradient of the target logit averaged over the patches, map =
    ``relu(sum_c weight_c * activation_c)``.
    """
    check_images(images)
    check_autograd("gradcam")
    adapter = adapter_for(model)
    adapter.require_head("gradcam")
    check_layer_index("layer", layer, adapter.depth, allow_negative=True)
    layer = layer % adapter.depth
    x = images.detach().to(model_device(model, images.device))
    grid = adapter.grid(x)
    prefix = adapter.num_prefix_tokens
    seen: list[torch.Tensor] = []
    with adapter.session():
        with torch.no_grad():
            trace = adapter.trace(x, first=layer, output=False)
        handle = adapter.gradcam_layer(layer).register_forward_hook(
            lambda _module, _args, out: seen.append(out))
        try:
            with torch.enable_grad():
                tokens = trace.inputs[0].detach().requires_grad_(True)
                for index in range(layer, adapter.depth):
                    tokens = adapter.run_block(index, tokens, trace.kwargs[index])
                grad, _ = target_gradient(adapter, tokens, target, wrt=seen[0])
        finally:
            handle.remove()
        activations = seen[0].detach()[:, prefix:]  # (B, P, D)
        weights = grad[:, prefix:].mean(dim=1)  # (B, D): gradient averaged over the patches
        cam = (activations * weights[:, None, :]).sum(dim=-1).clamp(min=0)  # (B, P)
        return cam.reshape(-1, *grid)
