"""Image transforms with albumentations: training augmentation and the evaluation crop.

    build_transform(img_size=224, train=True)     RandomResizedCrop, flip, RandAugment, normalise
    eval_geometry(224) + normalize_transform()    the evaluation transform in its two steps
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

# albumentations asks PyPI for a newer version on every import (and warns offline); skip that
# unless the user has set the variable themselves.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A
from albumentations.pytorch import ToTensorV2

from vit.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resolve_crop_pct",
    "ImageTransform",
    "build_transform",
    "normalize_transform",
    "eval_geometry",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def resolve_crop_pct(img_size: int, crop_pct: float | None) -> float:
    """``crop_pct`` or, for None, 0.875 from 128 px up and 1.0 (no centre crop) below."""
    if crop_pct is None:
        return 0.875 if img_size >= 128 else 1.0
    if not 0.0 < crop_pct <= 1.0:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return float(crop_pct)


def _eval_geometry_ops(img_size: int, crop_pct: float | None) -> list[Any]:
    resize = math.floor(img_size / resolve_crop_pct(img_size, crop_pct) + 1e-6)
    return [
        A.SmallestMaxSize(max_size=resize, area_for_downscale="image"),
        A.CenterCrop(height=img_size, width=img_size),
    ]


def _randaugment_ops(magnitude: float, fill: tuple[float, ...]) -> list[Any]:
    """RandAugment-style ops; each strength is drawn from [0, magnitude / 10] of its maximum."""
    f = magnitude / 10.0
    rot, shear, shift = 30.0 * f, 17.0 * f, 0.45 * f  # degrees, degrees (~0.3 rad), fraction
    enhance = 0.9 * f
    return [
        A.Affine(rotate=(-rot, rot), fill=fill, p=1.0),
        A.Affine(shear={"x": (-shear, shear), "y": (0, 0)}, fill=fill, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-shear, shear)}, fill=fill, p=1.0),
        A.Affine(translate_percent={"x": (-shift, shift), "y": (0, 0)}, fill=fill, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-shift, shift)}, fill=fill, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=enhance, contrast_limit=0.0, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=enhance, p=1.0),
        A.ColorJitter(brightness=0.0, contrast=0.0, saturation=enhance, hue=0.0, p=1.0),
        A.Sharpen(alpha=(0.0, min(enhance, 1.0)), lightness=(1.0, 1.0), p=1.0),
        A.Posterize(num_bits=(8 - round(4 * f), 8), p=1.0),
        A.Solarize(threshold_range=(1.0 - f, 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.AutoContrast(p=1.0),
    ]


class ImageTransform:
    """Callable: PIL image (or HxWx3 uint8 array) -> float tensor (3, H, W).

    Wraps an albumentations ``Compose``. Albumentations 2.x keeps its own random generators
    (it ignores ``numpy.random`` and ``random``), so reproducibility comes from ``set_seed``.
    """

    def __init__(self, pipeline: A.Compose):
        self.pipeline = pipeline

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        return self.pipeline(image=image)["image"]

    def set_seed(self, seed: int | None) -> None:
        """Restart the augmentation random stream from ``seed`` (None: OS entropy)."""
        self.pipeline.set_random_seed(seed)

    def set_sample_seed(self, *key: int) -> None:
        """Make the next call's randomness a function of ``key``, e.g. (seed, epoch, index)."""
        rng = np.random.default_rng([k % 2**64 for k in key])
        self.pipeline.set_random_state(rng, random.Random(int(rng.integers(2**63))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


def _check_transform_args(
    img_size: int, mean: Sequence[float], std: Sequence[float], scale: tuple[float, float],
    ratio: tuple[float, float], hflip: float, randaug_n: int, randaug_m: float,
) -> None:
    if img_size < 1:
        raise ConfigError(f"img_size must be positive, got {img_size}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    if not 0.0 <= hflip <= 1.0:
        raise ConfigError(f"hflip is a probability in [0, 1], got {hflip}")
    if not 0 <= randaug_n <= len(_randaugment_ops(0, (0, 0, 0))):
        raise ConfigError(f"randaug_n must be in [0, 13], got {randaug_n}")
    if not 0 <= randaug_m <= 10:
        raise ConfigError(f"randaug_m must be in [0, 10], got {randaug_m}")


def build_transform(
    *,
    img_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    randaug_n: int = 2,
    randaug_m: float = 9,
    seed: int | None = None,
) -> ImageTransform:
    """The training or evaluation transform: PIL image -> normalised tensor (3, S, S).

    Train: RandomResizedCrop(scale, ratio) + HorizontalFlip(hflip) + ``randaug_n`` random ops
    of strength up to ``randaug_m``/10 (0 ops disables it) + Normalize. Eval: resize the
    shorter side to ``img_size / crop_pct``, centre-crop ``img_size`` (see ``resolve_crop_pct``),
    Normalize; ``scale``, ``ratio``, ``hflip`` and ``randaug_*`` are ignored.
    """
    _check_transform_args(img_size, mean, std, scale, ratio, hflip, randaug_n, randaug_m)
    normalize = _normalize_ops(mean, std)
    if not train:
        return ImageTransform(A.Compose([*_eval_geometry_ops(img_size, crop_pct), *normalize],
                                        seed=seed))
    ops: list[Any] = [
        A.RandomResizedCrop(size=(img_size, img_size), scale=tuple(scale), ratio=tuple(ratio),
                            area_for_downscale="image"),
        A.HorizontalFlip(p=hflip),
    ]
    if randaug_n > 0:
        fill = tuple(255.0 * m for m in mean)  # padding becomes 0 after normalisation
        ops.append(A.SomeOf(_randaugment_ops(randaug_m, fill), n=randaug_n, p=1.0))
    return ImageTransform(A.Compose([*ops, *normalize], seed=seed))


def _normalize_ops(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def normalize_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> ImageTransform:
    """HxWx3 uint8 (e.g. what ``eval_geometry`` gives) -> normalised float tensor (3, H, W):
    the last step of every transform. ``eval_geometry`` then this is the eval transform."""
    return ImageTransform(A.Compose(_normalize_ops(mean, std)))


def eval_geometry(img_size: int, crop_pct: float | None = None) -> A.Compose:
    """Just the resize + centre crop of the eval transform (uint8 in, uint8 out)."""
    return A.Compose(_eval_geometry_ops(img_size, crop_pct))
