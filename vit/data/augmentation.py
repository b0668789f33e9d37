"""The training augmentation, declared once: crop defaults and the RandAugment table.

Two pipelines run this recipe, and both are generated from the table here:

    vit.data.transforms   albumentations, one image at a time in loader workers
                          (``data.pipeline=albumentations``, any data set)
    vit.data.memory       tensor ops on whole batches on the training device, each image with its
                          own draws (``data.pipeline=memory``, small images)

Each row of ``RANDAUGMENT`` names an op and the range its parameter is drawn from at a given
magnitude; each pipeline holds one builder per name (``transforms._ALBUMENTATIONS_OPS``,
``memory._TENSOR_OPS``) and nothing else about the op. Adding, removing, reordering or
re-ranging an op is an edit of this table; ``tests/test_augmentation.py`` fails if a pipeline
lacks a builder for a row, or if the two pipelines' outputs for a row differ in distribution.

Why not torchvision.transforms.v2 for the batched path: its random transforms draw one set of
parameters per call, so on a ``(B, C, H, W)`` batch every image gets the same rotation, the same
RandAugment ops (checked with torchvision 0.29: ``v2.RandAugment`` and ``v2.RandomRotation``
return B identical images), which is not per-image augmentation; its functional ops take one
scalar parameter for the whole batch; and its ``equalize`` follows PIL, not OpenCV's
``equalizeHist`` that albumentations uses (up to 29 grey levels apart on a test photo). kornia,
which draws per image, is not a dependency of this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vit.errors import ConfigError

__all__ = [
    "AugmentRecipe",
    "DEFAULT_AUGMENT",
    "CROP_RATIO",
    "CROP_SCALE",
    "HFLIP",
    "RANDAUGMENT",
    "RANDAUG_M",
    "RANDAUG_N",
    "RandAugOp",
    "check_augment_args",
    "fill_value",
]

# RandomResizedCrop(scale, ratio) + HorizontalFlip(p=HFLIP), then RANDAUG_N ops of the table at
# strength RANDAUG_M / 10: ImageNet's recipe, the defaults of both pipelines.
CROP_SCALE: tuple[float, float] = (0.08, 1.0)
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
HFLIP = 0.5
RANDAUG_N = 2
RANDAUG_M = 9.0


@dataclass(frozen=True)
class RandAugOp:
    """One RandAugment op: its parameter is drawn uniformly from ``range(magnitude)``.

    ``limit`` is the parameter's extreme at magnitude 10 (scaled by magnitude / 10):
    ``signed`` ops draw from ``(-limit * f, limit * f)``; others from ``(base - limit * f,
    base)`` (``decreasing``) or ``(base, base + limit * f)``, capped at ``cap``; ``integer``
    ops draw whole numbers with the range's ends rounded; ``limit=None``: no parameter.
    """

    name: str
    meaning: str
    limit: float | None = None
    signed: bool = False
    base: float = 0.0
    decreasing: bool = False
    cap: float | None = None
    integer: bool = False

    def reach(self, magnitude: float) -> float:
        """How far the parameter may go from ``base`` at ``magnitude`` (0..10)."""
        if self.limit is None:
            return 0.0
        reach = self.limit * (magnitude / 10.0)
        if self.cap is not None:
            reach = min(reach, self.cap)
        return float(round(reach)) if self.integer else reach

    def range(self, magnitude: float) -> tuple[float, float]:
        """The parameter's ``(low, high)`` at ``magnitude`` (0..10)."""
        reach = self.reach(magnitude)
        if self.signed:
            return (-reach, reach)
        return (self.base - reach, self.base) if self.decreasing else (self.base,
                                                                        self.base + reach)


# The order matters: each image applies its chosen ops in this order (as A.SomeOf does).
RANDAUGMENT: tuple[RandAugOp, ...] = (
    RandAugOp("rotate", "degrees", limit=30.0, signed=True),
    RandAugOp("shear_x", "degrees", limit=17.0, signed=True),
    RandAugOp("shear_y", "degrees", limit=17.0, signed=True),
    RandAugOp("translate_x", "fraction of the width (whole pixels, toward 0)", limit=0.45,
              signed=True),
    RandAugOp("translate_y", "fraction of the height (whole pixels, toward 0)", limit=0.45,
              signed=True),
    RandAugOp("brightness", "offset, a fraction of 255", limit=0.9, signed=True),
    RandAugOp("contrast", "gain - 1", limit=0.9, signed=True),
    RandAugOp("saturation", "blend factor with the grey image - 1", limit=0.9, signed=True),
    RandAugOp("sharpen", "blend factor of the sharpened image", limit=0.9, cap=1.0),
    RandAugOp("posterize", "bits kept", limit=4.0, base=8.0, decreasing=True, integer=True),
    RandAugOp("solarize", "threshold, a fraction of 255", limit=1.0, base=1.0, decreasing=True),
    RandAugOp("equalize", "per-channel histogram equalisation (OpenCV's equalizeHist)"),
    RandAugOp("autocontrast", "albumentations' AutoContrast(method='cdf'), run as equalize"),
)


def fill_value(mean: Sequence[float]) -> tuple[float, ...]:
    """The colour of pixels an affine op brings in from outside: 0 after normalisation."""
    return tuple(255.0 * m for m in mean)


def check_augment_args(*, scale: Sequence[float], ratio: Sequence[float], hflip: float,
                       randaug_n: int, randaug_m: float) -> None:
    """Raise a ``ConfigError`` naming the first invalid argument of the training recipe."""
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    if not 0.0 <= hflip <= 1.0:
        raise ConfigError(f"hflip is a probability in [0, 1], got {hflip}")
    if not 0 <= randaug_n <= len(RANDAUGMENT):
        raise ConfigError(f"randaug_n must be in [0, {len(RANDAUGMENT)}], got {randaug_n}")
    if not 0 <= randaug_m <= 10:
        raise ConfigError(f"randaug_m must be in [0, 10], got {randaug_m}")


@dataclass(frozen=True)
class AugmentRecipe:
    """The training augmentation's settings, as both pipelines take them (``data.scale``,
    ``data.ratio``, ``data.hflip``, ``data.randaug_n``, ``data.randaug_m``); checked on creation.

        AugmentRecipe(scale=(0.35, 1.0), randaug_n=1)     # the rest: ImageNet's defaults
        AugmentRecipe.of(cfg.data)                        # a run's
    """

    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    hflip: float = HFLIP
    randaug_n: int = RANDAUG_N
    randaug_m: float = RANDAUG_M

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(self.scale))
        object.__setattr__(self, "ratio", tuple(self.ratio))
        check_augment_args(scale=self.scale, ratio=self.ratio, hflip=self.hflip,
                           randaug_n=self.randaug_n, randaug_m=self.randaug_m)

    @classmethod
    def of(cls, data: object) -> AugmentRecipe:
        """The recipe of a data config (anything with the five fields, e.g. ``cfg.data``)."""
        return cls(scale=data.scale, ratio=data.ratio, hflip=data.hflip,  # type: ignore[attr-defined]
                   randaug_n=data.randaug_n, randaug_m=data.randaug_m)  # type: ignore[attr-defined]


DEFAULT_AUGMENT = AugmentRecipe()  # ImageNet's recipe, both pipelines' default
