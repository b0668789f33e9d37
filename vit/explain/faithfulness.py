"""How faithful a saliency map is: deletion and insertion AUC (Petsiuk et al. 2018, RISE).

Remove (or reveal) the patches in saliency order and integrate the probability of the predicted
class: a map that points at what the model uses makes it fall fast (deletion, lower is better)
and rise fast (insertion, higher is better). ``random_saliency`` is the baseline to beat.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from vit.errors import ConfigError
from vit.explain.inputs import check_choice, check_images, eval_mode, model_device, resolve_target

__all__ = [
    "BASELINES",
    "deletion_auc",
    "insertion_auc",
    "random_saliency",
    "make_baseline",
]

logger = logging.getLogger(__name__)

BASELINES = ("blur", "mean", "zero")
MAX_DEFAULT_STEPS = 256  # one patch per step up to this many patches
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's blurred baseline


def random_saliency(batch: int, grid: tuple[int, int], generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    """A random (batch, grid_h, grid_w) map: the random-order baseline for deletion/insertion."""
    return torch.rand((batch, *grid), generator=generator)


def make_baseline(images: torch.Tensor, kind: str) -> torch.Tensor:
    """What replaces a patch: "blur" (Gaussian, as RISE), "mean" (per image and channel), "zero"."""
    check_choice("baseline", kind, BASELINES)
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
    check_images(images)
    grid = _check_saliency_grid(images, saliency)
    num_patches = grid[0] * grid[1]
    steps = _default_steps(num_patches) if steps is None else steps
    if not 1 <= steps <= num_patches:
        raise ConfigError(f"steps must be in [1, {num_patches}] for a {grid[0]}x{grid[1]} grid; got {steps}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")

    x = images.to(model_device(model, images.device))
    base = make_baseline(x, baseline)
    start, fill = (base, x) if insert else (x, base)
    ranks = _patch_ranks(saliency.to(x.device))
    counts = _step_counts(num_patches, steps)
    chunk = max(1, batch_size // x.shape[0])  # curve points per forward pass, all images at once
    with eval_mode(model), torch.no_grad():
        classes = resolve_target(target, model(x))
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
