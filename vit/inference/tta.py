"""Test-time augmentation: several views of each image, their class probabilities averaged.

    views = tta_views(batch, "flip")     # [batch, batch flipped left-right]

``flip``: the image and its mirror (2 forward passes). ``crops``: the image, and the four corner
crops of the image enlarged by ``CROP_ZOOM`` (each a shift of 1/9 of its side towards a corner),
each also mirrored (10 forward passes). The views are made from the normalised batch the model
sees; resizing commutes with the per-channel normalisation, so they equal views of the image
normalised afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vit.errors import ConfigError

__all__ = ["TTA_MODES", "CROP_ZOOM", "check_tta", "tta_views"]

TTA_MODES = ("flip", "crops")
CROP_ZOOM = 1.125  # the corner crops come from the image enlarged this much


def check_tta(tta: str | None) -> str | None:
    """``None``/"none" -> None; a known mode as is; anything else a one-line error."""
    if tta is None or tta == "none":
        return None
    if tta not in TTA_MODES:
        raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)} (or none), got {tta!r}")
    return tta


def _corner_crops(batch: torch.Tensor) -> list[torch.Tensor]:
    """The four corner crops, each of the batch's size, of the batch enlarged by CROP_ZOOM."""
    h, w = batch.shape[-2:]
    big_h, big_w = round(h * CROP_ZOOM), round(w * CROP_ZOOM)
    big = F.interpolate(batch, size=(big_h, big_w), mode="bilinear", align_corners=False,
                        antialias=False)  # (N, 3, big_h, big_w)
    dy, dx = big_h - h, big_w - w
    return [big[..., y:y + h, x:x + w] for y in (0, dy) for x in (0, dx)]


def tta_views(batch: torch.Tensor, tta: str | None) -> list[torch.Tensor]:
    """The views of a (N, 3, H, W) batch that ``tta`` averages over, the batch itself first."""
    tta = check_tta(tta)
    if tta is None:
        return [batch]
    if tta == "flip":
        return [batch, batch.flip(-1)]
    views = [batch, *_corner_crops(batch)]
    return views + [v.flip(-1) for v in views]
