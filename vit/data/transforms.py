"""Image transforms with albumentations: training augmentation and the evaluation crop.

    build_transform(img_size=224, train=True)     RandomResizedCrop, flip, RandAugment, normalise
    eval_geometry(224) + normalize_transform()    the evaluation transform in its two steps

The training recipe (crop defaults, the RandAugment ops, their order and ranges) is declared in
``vit.data.augmentation``; this module only maps each of its ops to albumentations.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

# albumentations asks PyPI for a newer version on every import (and warns offline); skip that
# unless the user has set the variable themselves.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A
from albumentations.pytorch import ToTensorV2

from vit.data.augmentation import (
    DEFAULT_AUGMENT,
    RANDAUGMENT,
    AugmentRecipe,
    fill_value,
)
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


# Each row of vit.data.augmentation.RANDAUGMENT as an albumentations op: (the parameter's
# (low, high) at the run's magnitude, the fill colour) -> a transform that draws the parameter
# uniformly from that range. The parameter's meaning is the table's.
_ALBUMENTATIONS_OPS: dict[str, Callable[[tuple[float, float], tuple[float, ...]], Any]] = {
    "rotate": lambda r, fill: A.Affine(rotate=r, fill=fill, p=1.0),
    "shear_x": lambda r, fill: A.Affine(shear={"x": r, "y": (0, 0)}, fill=fill, p=1.0),
    "shear_y": lambda r, fill: A.Affine(shear={"x": (0, 0), "y": r}, fill=fill, p=1.0),
    "translate_x": lambda r, fill: A.Affine(translate_percent={"x": r, "y": (0, 0)}, fill=fill,
                                            p=1.0),
    "translate_y": lambda r, fill: A.Affine(translate_percent={"x": (0, 0), "y": r}, fill=fill,
                                            p=1.0),
    "brightness": lambda r, _: A.RandomBrightnessContrast(brightness_limit=r, contrast_limit=0.0,
                                                          p=1.0),
    "contrast": lambda r, _: A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=r,
                                                        p=1.0),
    "saturation": lambda r, _: A.ColorJitter(brightness=0.0, contrast=0.0,
                                             saturation=(1 + r[0], 1 + r[1]), hue=0.0, p=1.0),
    "sharpen": lambda r, _: A.Sharpen(alpha=r, lightness=(1.0, 1.0), p=1.0),
    "posterize": lambda r, _: A.Posterize(num_bits=(int(r[0]), int(r[1])), p=1.0),
    "solarize": lambda r, _: A.Solarize(threshold_range=r, p=1.0),
    "equalize": lambda _r, _: A.Equalize(p=1.0),
    "autocontrast": lambda _r, _: A.AutoContrast(p=1.0),
}


def randaugment_ops(magnitude: float, fill: tuple[float, ...]) -> list[Any]:
    """The albumentations ops of the ``RANDAUGMENT`` table at ``magnitude``, in its order."""
    return [_ALBUMENTATIONS_OPS[op.name](op.range(magnitude), fill) for op in RANDAUGMENT]


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


def _check_transform_args(img_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if img_size < 1:
        raise ConfigError(f"img_size must be positive, got {img_size}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")


def build_transform(
    *,
    img_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float | None = None,
    recipe: AugmentRecipe = DEFAULT_AUGMENT,
    seed: int | None = None,
) -> ImageTransform:
    """The training or evaluation transform: PIL image -> normalised tensor (3, S, S).

    Train, by ``recipe``: RandomResizedCrop(scale, ratio) + HorizontalFlip(hflip) + ``randaug_n``
    random ops of strength up to ``randaug_m``/10 (0 ops disables it) + Normalize. Eval: resize
    the shorter side to ``img_size / crop_pct``, centre-crop ``img_size`` (see
    ``resolve_crop_pct``), Normalize; ``recipe`` is ignored.
    """
    _check_transform_args(img_size, mean, std)
    normalize = _normalize_ops(mean, std)
    if not train:
        return ImageTransform(A.Compose([*_eval_geometry_ops(img_size, crop_pct), *normalize],
                                        seed=seed))
    ops: list[Any] = [
        A.RandomResizedCrop(size=(img_size, img_size), scale=recipe.scale, ratio=recipe.ratio,
                            area_for_downscale="image"),
        A.HorizontalFlip(p=recipe.hflip),
    ]
    if recipe.randaug_n > 0:
        ops.append(A.SomeOf(randaugment_ops(recipe.randaug_m, fill_value(mean)),
                            n=recipe.randaug_n, p=1.0))
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
