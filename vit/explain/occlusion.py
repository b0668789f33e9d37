"""The occlusion oracle (Zeiler & Fergus 2014): what the model really uses, one forward pass per
patch hidden."""

from __future__ import annotations

import torch
from torch import nn

from vit.explain.faithfulness import make_baseline
from vit.explain.inputs import eval_mode, input_grid

__all__ = ["occlusion"]


def occlusion(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, baseline: str = "zero",
    batch_size: int = 256,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus 2014): (B, grid_h, grid_w) drop of the target logit when that
    one patch is replaced by ``baseline`` (vit.explain.make_baseline); one forward pass per patch.
    """
    gh, gw = input_grid(model, images)
    h, w = images.shape[-2:]
    patch_of_pixel = torch.arange(gh * gw, device=images.device).reshape(gh, gw) \
        .repeat_interleave(h // gh, dim=0).repeat_interleave(w // gw, dim=1)  # (H, W)
    fill = make_baseline(images, baseline)
    b, drops = images.shape[0], []
    with eval_mode(model), torch.no_grad():
        full = model(images).float().gather(1, classes[:, None])  # (B, 1)
        for patches in torch.arange(gh * gw, device=images.device).split(max(1, batch_size // b)):
            hidden = patch_of_pixel[None] == patches[:, None, None]  # (k, H, W)
            variants = torch.where(hidden[None, :, None], fill[:, None], images[:, None])
            logits = model(variants.flatten(0, 1)).float().reshape(b, len(patches), -1)
            occluded = logits.gather(2, classes[:, None, None].expand(b, len(patches), 1))[..., 0]
            drops.append(full - occluded)  # (B, k)
    return torch.cat(drops, dim=1).reshape(b, gh, gw)

