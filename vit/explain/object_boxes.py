"""A known object's box on the patch grid: which patches it covers after the evaluation resize
and centre crop (explain-bench's asked-object measures, the overlays' share of a map on the
object).

    mask = patch_mask((x0, y0, x1, y1), (height, width), img_size=224, crop_pct=0.875,
                      patch_size=16)   # (grid_h, grid_w) bool
"""

from __future__ import annotations

import numpy as np
import torch

from vit.data.transforms import eval_geometry

__all__ = ["Box", "patch_mask"]

Box = tuple[int, int, int, int]  # pixel box [x0, y0, x1, y1) in the file's own coordinates


def patch_mask(box: Box, image_hw: tuple[int, int], *, img_size: int, crop_pct: float | None,
               patch_size: int) -> torch.Tensor:
    """(grid_h, grid_w) bool: the patches whose centre lies on the box, after the eval resize
    and centre crop the model's input went through."""
    x0, y0, x1, y1 = box
    mask = np.zeros(image_hw, dtype=np.uint8)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1
    blank = np.zeros((*image_hw, 3), dtype=np.uint8)
    mask = eval_geometry(img_size, crop_pct)(image=blank, mask=mask)["mask"]
    centre = patch_size // 2
    return torch.from_numpy(mask[centre::patch_size, centre::patch_size].astype(bool))
