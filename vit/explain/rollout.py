"""Saliency maps for a ViT's decision: attention rollout, gradient rollout, raw attention.

    attention_rollout(model, images)   # Abnar & Zuidema 2020: how much [CLS] draws from each patch
    gradient_rollout(model, images)    # Chefer et al. 2021: attention weighted by its gradient
    raw_attention(model, images)       # one layer's [CLS] attention
    overlay(image, saliency)           # the map over the image, as an RGB uint8 array
    deletion_auc / insertion_auc       # how faithful a map is (Petsiuk et al. 2018, RISE)

Every map is ``(B, grid_h, grid_w)``: the [CLS] row on the patch tokens, register tokens left out,
with the grid of the input size (which may differ from the trained size).

The model stays fused (scaled_dot_product_attention) for training and prediction; the explainers
ask for the attention weights with ``model(x, return_attention=True)`` for that call only, with
the model in eval mode, and restore every module's train/eval flag afterwards.

Rollout needs only the [CLS] row of ``M_L @ ... @ M_1``. Multiplying the row vector ``e_0``
from the left, last layer first, costs O(N^2) per layer instead of the O(N^3) of the full product.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from vit.errors import ConfigError

__all__ = [
    "HEAD_FUSIONS",
    "METHODS",
    "BASELINES",
    "attention_rollout",
    "gradient_rollout",
    "raw_attention",
    "explain",
    "rollout_from_attentions",
    "grad_rollout_from_attentions",
    "fuse_heads",
    "discard_lowest",
    "overlay",
    "deletion_auc",
    "insertion_auc",
    "random_saliency",
    "make_baseline",
]

logger = logging.getLogger(__name__)

HEAD_FUSIONS = ("mean", "max", "min")
METHODS = ("rollout", "grad-rollout", "attention")
BASELINES = ("blur", "mean", "zero")
MAX_DEFAULT_STEPS = 256  # deletion/insertion: one patch per step up to this many patches
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's blurred baseline


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(
            f"images must be a (B, C, H, W) tensor, got {shape}; add a batch dimension with "
            "images.unsqueeze(0) for a single image"
        )


def _check_layer_index(name: str, index: int, depth: int, allow_negative: bool) -> None:
    low = -depth if allow_negative else 0
    if not low <= index < depth:
        raise ConfigError(f"{name} must be in [{low}, {depth - 1}] for {depth} layers; got {index}")


def _check_rollout_args(head_fusion: str, discard_ratio: float, start_layer: int, depth: int) -> None:
    _check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard_ratio must be in [0, 1); got {discard_ratio}")
    _check_layer_index("start_layer", start_layer, depth, allow_negative=False)


# ---------------------------------------------------------------------------------------------
# The math, on attention tensors (pure functions)
# ---------------------------------------------------------------------------------------------


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N): mean, max or min over the heads."""
    _check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the ``int(N * discard_ratio)`` smallest entries of each row; never the diagonal."""
    n = fused.shape[-1]
    k = int(n * discard_ratio)
    if k == 0:
        return fused
    diagonal = torch.eye(n, dtype=torch.bool, device=fused.device)
    candidates = fused.masked_fill(diagonal, float("inf"))  # the diagonal is never among the k
    lowest = candidates.topk(k, dim=-1, largest=False).indices
    return fused.scatter(-1, lowest, 0.0)


def _cls_rows(attention: torch.Tensor) -> torch.Tensor:
    """e_0 for every image: (B, N) with a 1 on the [CLS] token."""
    b, n = attention.shape[0], attention.shape[-1]
    row = torch.zeros(b, n, device=attention.device)
    row[:, 0] = 1.0
    return row


def _row_times_heads(row: torch.Tensor, per_head: torch.Tensor) -> torch.Tensor:
    """sum over heads of ``row @ per_head[:, h]``: (B, N) and (B, heads, N, N) -> (B, N).

    One batched vector-matrix product that reads ``per_head`` once.
    """
    b, heads, n, _ = per_head.shape
    rows = row[:, None, :].expand(b, heads, n).reshape(b, 1, heads * n)
    return (rows @ per_head.reshape(b, heads * n, n))[:, 0]


def _rollout_step(
    row: torch.Tensor, attention: torch.Tensor, head_fusion: str, discard_ratio: float
) -> torch.Tensor:
    """``row @ M`` for one block's ``M = rownorm(0.5 * F + 0.5 * I)``, without forming M.

    F is the fused, thinned attention. With the row sums ``s = 0.5 * rowsum(F) + 0.5`` and
    ``w = row / s``: ``row @ M = 0.5 * w @ F + 0.5 * w``.
    """
    if head_fusion == "mean" and discard_ratio == 0.0:
        # The mean over heads commutes with row sums and products: F is never formed either.
        heads = attention.shape[1]
        w = row / (0.5 * attention.sum(dim=-1).mean(dim=1) + 0.5)
        w_times_f = _row_times_heads(w, attention) / heads
    else:
        fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
        w = row / (0.5 * fused.sum(dim=-1) + 0.5)
        w_times_f = (w[:, None, :] @ fused)[:, 0]
    return 0.5 * w_times_f + 0.5 * w


def _patch_map(cls_row: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N) [CLS] row -> (B, grid_h, grid_w) weights on the patch tokens (prefix dropped)."""
    gh, gw = grid
    n = cls_row.shape[-1]
    if n != num_prefix_tokens + gh * gw:
        raise ConfigError(
            f"attention over {n} tokens does not match {num_prefix_tokens} prefix tokens plus a "
            f"{gh}x{gw} grid of patches ({num_prefix_tokens + gh * gw} tokens)"
        )
    return cls_row[:, num_prefix_tokens:].reshape(-1, gh, gw)


def _check_attentions(attentions: Sequence[torch.Tensor]) -> None:
    if len(attentions) == 0:
        raise ConfigError("need at least one attention tensor, got none")
    for a in attentions:
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ConfigError(f"each attention must be (B, heads, N, N), got {tuple(a.shape)}")


def rollout_from_attentions(
    attentions: Sequence[torch.Tensor],
    num_prefix_tokens: int,
    grid: tuple[int, int],
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> torch.Tensor:
    """Attention rollout of per-block (B, heads, N, N) attentions -> (B, grid_h, grid_w).

    For each block from ``start_layer`` on: fuse the heads, optionally zero the lowest entries
    of each row, add the residual (``0.5 * A + 0.5 * I``), renormalise the rows, and chain.
    """
    _check_attentions(attentions)
    _check_rollout_args(head_fusion, discard_ratio, start_layer, depth=len(attentions))

    # R = M_L ... M_1 and only its [CLS] row is kept: e_0^T M_L ... M_1, as vector-matrix
    # products from the last block back, O(N^2) per block instead of O(N^3).
    blocks = attentions[start_layer:]
    row = _cls_rows(blocks[-1])
    for attention in reversed(blocks):
        row = _rollout_step(row, attention.float(), head_fusion, discard_ratio)
    return _patch_map(row, num_prefix_tokens, grid)


def grad_rollout_from_attentions(
    attentions: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    num_prefix_tokens: int,
    grid: tuple[int, int],
) -> torch.Tensor:
    """Chefer et al. 2021 rollout -> (B, grid_h, grid_w); ``gradients[l]`` belongs to ``attentions[l]``.

    ``A_bar_l = mean_heads(relu(grad_l * A_l))`` and ``R <- R + A_bar_l @ R`` from ``R = I``.
    """
    _check_attentions(attentions)
    if len(gradients) != len(attentions):
        raise ConfigError(f"got {len(attentions)} attentions but {len(gradients)} gradients")
    # [CLS] row of (I + A_bar_L) ... (I + A_bar_1), from the last block back (see rollout).
    row = _cls_rows(attentions[-1])
    for attention, gradient in zip(reversed(attentions), reversed(gradients), strict=True):
        relevance = (gradient.float() * attention.float()).clamp(min=0)
        row = row + _row_times_heads(row, relevance) / attention.shape[1]
    return _patch_map(row, num_prefix_tokens, grid)


# ---------------------------------------------------------------------------------------------
# On a model
# ---------------------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and full precision inside, then every module's own train/eval flag back.

    An autocast around the call is switched off here: in bf16, attention and its gradients keep
    8 significant bits, and gradient rollout, which multiplies their products over every layer,
    came out 68% off (relative error) on a 12-layer CIFAR-10 model on an H200 (fp32: 1e-6).
    The maps are therefore computed inside this context too, not only the forward pass.
    """
    flags = [(m, m.training) for m in model.modules()]
    device_type = _model_device(model, torch.device("cpu")).type
    model.eval()
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        for m, training in flags:
            m.training = training


def _model_device(model: nn.Module, default: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else default


def _input_grid(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    ph, pw = model.patch_embed.patch_size
    return images.shape[-2] // ph, images.shape[-1] // pw


def _resolve_target(target: int | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """None -> the predicted class; an int -> that class for every image; else a (B,) tensor."""
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=-1)
    target = torch.as_tensor(target, device=logits.device).long()
    if target.ndim == 0:
        target = target.expand(batch)
    if target.shape != (batch,):
        raise ConfigError(f"target must be an int or a ({batch},) tensor, got shape {tuple(target.shape)}")
    if target.min() < 0 or target.max() >= num_classes:
        raise ConfigError(f"target classes must be in [0, {num_classes - 1}], got {target.tolist()}")
    return target


Maps = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def attention_rollout(
    model: nn.Module,
    images: torch.Tensor,
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    return_logits: bool = False,
) -> Maps:
    """Attention rollout (Abnar & Zuidema 2020) of a batch -> (B, grid_h, grid_w) raw weights.

    With ``return_logits`` also the (B, num_classes) logits of the same forward pass.
    """
    _check_images(images)
    _check_rollout_args(head_fusion, discard_ratio, start_layer, depth=len(model.blocks))
    x = images.to(_model_device(model, images.device))
    with _eval_mode(model), torch.no_grad():
        logits, attentions = model(x, return_attention=True)
        maps = rollout_from_attentions(
            attentions, model.num_prefix_tokens, _input_grid(model, x),
            head_fusion=head_fusion, discard_ratio=discard_ratio, start_layer=start_layer,
        )
    return (maps, logits) if return_logits else maps


def gradient_rollout(
    model: nn.Module, images: torch.Tensor, *, target: int | torch.Tensor | None = None,
    return_logits: bool = False,
) -> Maps:
    """Gradient-weighted rollout (Chefer et al. 2021) for ``target`` (default: predicted class).

    One backward pass gives every image's gradients (the images are independent); only the
    attention tensors get gradients, so the parameters' ``.grad`` are left untouched. With
    ``return_logits`` also the (B, num_classes) logits of the same forward pass.
    """
    _check_images(images)
    if torch.is_inference_mode_enabled():
        raise ConfigError("gradient_rollout needs autograd: call it outside torch.inference_mode()")
    # A leaf that requires grad keeps the graph alive even when the parameters are frozen.
    x = images.detach().to(_model_device(model, images.device)).requires_grad_(True)
    with _eval_mode(model), torch.enable_grad():
        logits, attentions = model(x, return_attention=True)
        classes = _resolve_target(target, logits.detach())
        score = logits.gather(1, classes[:, None]).sum()
        gradients = torch.autograd.grad(score, attentions)
        maps = grad_rollout_from_attentions([a.detach() for a in attentions], gradients,
                                            model.num_prefix_tokens, _input_grid(model, x))
    return (maps, logits.detach()) if return_logits else maps


def raw_attention(
    model: nn.Module, images: torch.Tensor, *, layer: int = -1, head_fusion: str = "mean",
    return_logits: bool = False,
) -> Maps:
    """One layer's head-fused [CLS] attention on the patches -> (B, grid_h, grid_w); with
    ``return_logits`` also the (B, num_classes) logits of the same forward pass."""
    _check_images(images)
    _check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    _check_layer_index("layer", layer, len(model.blocks), allow_negative=True)
    x = images.to(_model_device(model, images.device))
    with _eval_mode(model), torch.no_grad():
        logits, attentions = model(x, return_attention=True)
        fused = fuse_heads(attentions[layer].float(), head_fusion)
        maps = _patch_map(fused[:, 0], model.num_prefix_tokens, _input_grid(model, x))
    return (maps, logits) if return_logits else maps


def explain(
    model: nn.Module, images: torch.Tensor, *, method: str = "rollout", **kwargs: Any
) -> Maps:
    """Saliency (B, grid_h, grid_w) by name: "rollout", "grad-rollout" or "attention"
    (``return_logits=True``: and the logits of the same forward pass)."""
    _check_choice("method", method, METHODS)
    explainer = {"rollout": attention_rollout, "grad-rollout": gradient_rollout,
                 "attention": raw_attention}[method]
    return explainer(model, images, **kwargs)


# ---------------------------------------------------------------------------------------------
# Overlay
# ---------------------------------------------------------------------------------------------


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
    """Bilinear upsampling to ``size``, then min-max to [0, 1]; a constant map gives zeros."""
    up = F.interpolate(saliency[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
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
    colormap: str = "jet",
) -> np.ndarray:
    """Blend a coloured (grid_h, grid_w) saliency map over the HxWx3 uint8 image the model saw.

    Returns ``(1 - alpha) * image + alpha * colormap(normalised saliency)`` as HxWx3 uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1]; got {alpha}")
    if colormap not in matplotlib.colormaps:
        raise ConfigError(f"unknown colormap {colormap!r}; try jet, viridis, inferno or turbo")
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


# ---------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion (Petsiuk et al. 2018, RISE)
# ---------------------------------------------------------------------------------------------


def random_saliency(batch: int, grid: tuple[int, int], generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    """A random (batch, grid_h, grid_w) map: the random-order baseline for deletion/insertion."""
    return torch.rand((batch, *grid), generator=generator)


def make_baseline(images: torch.Tensor, kind: str) -> torch.Tensor:
    """What replaces a patch: "blur" (Gaussian, as RISE), "mean" (per image and channel), "zero"."""
    _check_choice("baseline", kind, BASELINES)
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    return gaussian_blur(images, kernel_size=[BLUR_KERNEL, BLUR_KERNEL], sigma=[BLUR_SIGMA, BLUR_SIGMA])


def _patch_ranks(saliency: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw) -> (B, gh*gw): each patch's position when sorted by descending saliency."""
    order = saliency.flatten(1).argsort(dim=-1, descending=True, stable=True)
    return order.argsort(dim=-1)


def _step_counts(num_patches: int, steps: int) -> torch.Tensor:
    """How many patches are perturbed at each of the ``steps + 1`` points, 0 to num_patches."""
    return torch.linspace(0, num_patches, steps + 1).round().long()


def _perturb(
    start: torch.Tensor, fill: torch.Tensor, ranks: torch.Tensor, counts: torch.Tensor,
    grid: tuple[int, int],
) -> torch.Tensor:
    """(B, C, H, W) images -> (B, K, C, H, W): image k takes its ``counts[k]`` top-ranked patches
    from ``fill`` and the rest from ``start``."""
    (gh, gw), (h, w) = grid, start.shape[-2:]
    chosen = ranks[:, None, :] < counts[None, :, None].to(ranks.device)  # (B, K, P)
    chosen = chosen.reshape(*chosen.shape[:2], gh, gw)
    pixels = chosen.repeat_interleave(h // gh, dim=-2).repeat_interleave(w // gw, dim=-1)
    return torch.where(pixels[:, :, None], fill[:, None], start[:, None])


def _class_probability(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K, C, H, W) images and (B,) classes -> (B, K) softmax probability of the class."""
    b, k = images.shape[:2]
    probs = model(images.flatten(0, 1)).float().softmax(dim=-1).reshape(b, k, -1)
    return probs.gather(2, target[:, None, None].expand(b, k, 1))[..., 0]


def _check_saliency_grid(images: torch.Tensor, saliency: torch.Tensor) -> tuple[int, int]:
    if saliency.ndim != 3 or saliency.shape[0] != images.shape[0]:
        raise ConfigError(
            f"saliency must be (B, grid_h, grid_w) with B = {images.shape[0]} images, "
            f"got {tuple(saliency.shape)}"
        )
    gh, gw = saliency.shape[1:]
    h, w = images.shape[-2:]
    if h % gh or w % gw:
        raise ConfigError(f"a {gh}x{gw} saliency grid does not tile {h}x{w} images evenly")
    return gh, gw


def _default_steps(num_patches: int) -> int:
    steps = min(num_patches, MAX_DEFAULT_STEPS)
    if steps < num_patches:
        logger.debug("%d patches: perturbing about %d per step", num_patches, -(-num_patches // steps))
    return steps


def _perturbation_auc(
    model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, *, insert: bool,
    target: int | torch.Tensor | None, steps: int | None, baseline: str, batch_size: int,
) -> torch.Tensor:
    _check_images(images)
    grid = _check_saliency_grid(images, saliency)
    num_patches = grid[0] * grid[1]
    steps = _default_steps(num_patches) if steps is None else steps
    if not 1 <= steps <= num_patches:
        raise ConfigError(f"steps must be in [1, {num_patches}] for a {grid[0]}x{grid[1]} grid; got {steps}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")

    x = images.to(_model_device(model, images.device))
    base = make_baseline(x, baseline)
    start, fill = (base, x) if insert else (x, base)
    ranks = _patch_ranks(saliency.to(x.device))
    counts = _step_counts(num_patches, steps)
    chunk = max(1, batch_size // x.shape[0])  # curve points per forward pass, all images at once
    with _eval_mode(model), torch.no_grad():
        classes = _resolve_target(target, model(x))
        curve = torch.cat([
            _class_probability(model, _perturb(start, fill, ranks, c, grid), classes)
            for c in counts.split(chunk)
        ], dim=1)  # (B, steps + 1)
    return torch.trapezoid(curve, counts.to(curve) / num_patches, dim=-1)


def deletion_auc(
    model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, *,
    target: int | torch.Tensor | None = None, steps: int | None = None, baseline: str = "zero",
    batch_size: int = 64,
) -> torch.Tensor:
    """Area under the target probability as the most salient patches are replaced by ``baseline``.

    From the full image to the full baseline in ``steps`` steps (default: one patch per step, at
    most 256); x runs over [0, 1]. Lower = more faithful. Returns (B,). ``batch_size`` bounds the
    images per forward pass; ``target`` defaults to the class predicted on the full image.
    """
    return _perturbation_auc(model, images, saliency, insert=False, target=target, steps=steps,
                             baseline=baseline, batch_size=batch_size)


def insertion_auc(
    model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, *,
    target: int | torch.Tensor | None = None, steps: int | None = None, baseline: str = "blur",
    batch_size: int = 64,
) -> torch.Tensor:
    """Area under the target probability as the most salient patches are revealed on ``baseline``.

    The mirror of ``deletion_auc``, from the baseline to the full image. Higher = more faithful.
    """
    return _perturbation_auc(model, images, saliency, insert=True, target=target, steps=steps,
                             baseline=baseline, batch_size=batch_size)
