"""A saliency map over the image the model saw, as an RGB uint8 array (matplotlib colour maps)."""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vit.errors import ConfigError

__all__ = ["overlay", "DEFAULT_COLORMAP"]

# Perceptually uniform (equal steps of saliency look like equal steps of colour), readable in
# grey and by colour-blind readers; jet's bright bands invent edges that are not in the map.
DEFAULT_COLORMAP = "inferno"


def _as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[-1] != 3:
        what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) \
            else type(image).__name__
        raise ConfigError(f"image must be an HxWx3 uint8 RGB array or a PIL image, got {what}")
    return image


def _normalised_upsample(saliency: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling to ``size``, then to [0, 1]: min-max, or for a signed map (AttnLRP:
    negative relevance speaks against the class) its positive part over its maximum, so that 0
    and the evidence against both sit at the colour map's bottom. A constant map gives zeros."""
    up = F.interpolate(saliency[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
    if lo < 0.0 < hi and float(saliency.min()) < 0.0:  # signed in the map, not by interpolation
        return (up.clamp(min=0.0) / hi).double().numpy()
    span = hi - lo
    # Interpolating a constant map can leave float rounding noise; don't stretch it to [0, 1].
    if span <= 1e-6 * max(abs(lo), abs(hi)):
        return np.zeros(size, dtype=np.float64)
    return ((up - lo) / span).double().numpy()


def overlay(
    image: np.ndarray | Image.Image,
    saliency: torch.Tensor | np.ndarray,
    *,
    alpha: float = 0.5,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """Blend a coloured (grid_h, grid_w) saliency map over the HxWx3 uint8 image the model saw.

    Returns ``(1 - alpha) * image + alpha * colormap(normalised saliency)`` as HxWx3 uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1]; got {alpha}")
    if colormap not in matplotlib.colormaps:
        raise ConfigError(f"unknown colormap {colormap!r}; try inferno, viridis, magma or cividis")
    rgb = _as_rgb_array(image)
    sal = torch.as_tensor(saliency).detach().cpu().float()
    if sal.ndim != 2:
        raise ConfigError(f"saliency must be a 2-D (grid_h, grid_w) map, got shape {tuple(sal.shape)}")
    if not torch.isfinite(sal).all():
        raise ConfigError("saliency contains NaN or infinite values")
    heat = _normalised_upsample(sal, size=rgb.shape[:2])
    colour = matplotlib.colormaps[colormap](heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * rgb + alpha * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
