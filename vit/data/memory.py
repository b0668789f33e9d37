"""The in-memory input pipeline (``data.pipeline: memory``): decode once, augment whole batches.

Small images are cheap to compute on and expensive to feed: a GPU trains a ViT-Tiny on 32 px
images far faster than loader workers can decode and augment them one by one. This pipeline
decodes the data set once into a ``uint8`` tensor ``(N, S, S, 3)`` kept on the training device
and augments each batch there with tensor ops:

    RandomResizedCrop + horizontal flip   one ``grid_sample`` per batch, boxes drawn exactly as
                                          albumentations draws them (10 tries, then centre)
    RandAugment-style ops (``randaug_n``) the table of ``vit.data.augmentation`` (13 ops and
                                          their ranges), which also generates the albumentations
                                          pipeline (``vit.data.transforms``); each sample picks
                                          its own ops, applied in the table's order, in one pass
                                          per op over the samples that chose it
    Normalize

Training images are stored as their centre square resized to ``img_size`` (CIFAR-10 at 32 px is
stored as is), so crops come from the central square of a non-square photo; evaluation images
are stored exactly as the albumentations evaluation transform crops them. Randomness comes from
``(seed, epoch, batch)``, so a resumed run draws the same augmentations as one that was never
stopped, and torchrun processes together augment as one process would. ``tests/test_fastdata.py``
checks the crop and flip distribution against the albumentations pipeline and each op against
albumentations' own implementation; ``tests/test_augmentation.py`` that both pipelines follow the
table, op by op. The operations on the device per call do not depend on the batch size (258 for
RandAugment 2x9 at 32 px; the per-image parameters are computed on the CPU: see
``benchmarks/aug_ops.py``), so ``MemoryLoader(aug_batches=K)`` divides them per image by K.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vit.data.augmentation import (
    DEFAULT_AUGMENT,
    RANDAUGMENT,
    AugmentRecipe,
    fill_value,
)
from vit.data.images import UnreadableImageError, load_image
from vit.data.loader import EpochSampler
from vit.data.transforms import eval_geometry
from vit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

NUM_RANDAUG_OPS = len(RANDAUGMENT)  # the table of vit.data.augmentation, in its order


# ---------------------------------------------------------------------------------------------
# Decoding once
# ---------------------------------------------------------------------------------------------


_local = threading.local()  # one albumentations pipeline per decoding thread


def _decode_one(path: str, size: int, crop_pct: float) -> np.ndarray | str:
    """(S, S, 3) uint8 as the evaluation transform crops it, or the reason it cannot be read."""
    try:
        image = np.asarray(load_image(path))
    except UnreadableImageError as exc:
        return exc.reason
    if image.shape[:2] == (size, size) and crop_pct == 1.0:
        return image  # CIFAR-10 at 32 px: nothing to do
    key = (size, crop_pct)
    if getattr(_local, "key", None) != key:
        _local.key, _local.geometry = key, eval_geometry(size, crop_pct)
    return _local.geometry(image=image)["image"]


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def decode_images(paths: Sequence[str], *, size: int, crop_pct: float = 1.0, workers: int = 4,
                  desc: str = "decoding") -> tuple[torch.Tensor, list[int], list[dict[str, str]]]:
    """Decode ``paths`` into one ``uint8`` tensor ``(N_good, size, size, 3)``.

    Each image is resized (shorter side to ``size / crop_pct``) and centre-cropped to ``size``,
    as the evaluation transform does; ``crop_pct=1.0`` keeps the whole centre square.
    Returns ``(images, kept, skipped)``: ``kept`` are the indices into ``paths`` that decoded,
    ``skipped`` the ``{"path", "reason"}`` of those that did not (one warning each).
    """
    if not paths:
        raise DataError("no images to decode")
    needed = len(paths) * size * size * 3
    memory = _physical_memory()
    if memory is not None and needed > memory // 2:
        raise ConfigError(
            f"data.pipeline=memory would hold {len(paths)} images of {size}x{size} in "
            f"{needed / 2**30:.1f} GiB, more than half of this machine's {memory / 2**30:.1f} GiB; "
            "use data.pipeline=albumentations (decoding in loader workers) for this data set")
    images = torch.empty((len(paths), size, size, 3), dtype=torch.uint8)
    buffer = images.numpy()  # the same memory, filled from numpy without copies
    kept: list[int] = []
    skipped: list[dict[str, str]] = []

    def decode(i: int) -> tuple[int, np.ndarray | str]:
        return i, _decode_one(paths[i], size, crop_pct)

    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=None, leave=False) as bar:
        for i, result in pool.map(decode, range(len(paths)), chunksize=64):
            if isinstance(result, str):
                logger.warning("Skipping %s: %s", paths[i], result)  # as the pre-flight check
                skipped.append({"path": paths[i], "reason": result})
            else:
                buffer[len(kept)] = result
                kept.append(i)
            bar.update(1)
    if not kept:
        raise DataError(f"none of the {len(paths)} images could be decoded")
    return images[: len(kept)], kept, skipped


# ---------------------------------------------------------------------------------------------
# Random parameters, drawn on the CPU from a seeded generator
# ---------------------------------------------------------------------------------------------


def _uniform(low: float, high: float, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)


def sample_crop_boxes(batch: int, *, height: int, width: int, scale: Sequence[float],
                      ratio: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop boxes ``(batch, 4)`` as ``(x0, y0, w, h)`` in pixels.

    Albumentations' rule, vectorised: up to 10 tries of (area fraction ~ U(scale), log aspect ~
    U(log ratio)), sizes rounded, the first try that fits wins and its corner is uniform over the
    valid positions; if none fits, the centre crop with the aspect clamped to ``ratio``.
    """
    tries = 10
    area = height * width
    target = _uniform(scale[0] * area, scale[1] * area, (batch, tries), generator)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), (batch, tries), generator))
    w = torch.round(torch.sqrt(target * aspect))  # (B, tries)
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), -1)  # (B,) index of the first fit
    pick = first.clamp(min=0)[:, None]
    w, h = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0]
    h_start, w_start = torch.rand((2, batch), generator=generator, dtype=torch.float64)
    y0 = torch.floor((height - h + 1) * h_start)
    x0 = torch.floor((width - w + 1) * w_start)

    in_ratio = width / height  # the fallback: a centred crop of clamped aspect
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    none = first < 0
    w = torch.where(none, float(fw), w)
    h = torch.where(none, float(fh), h)
    x0 = torch.where(none, float((width - fw) // 2), x0)
    y0 = torch.where(none, float((height - fh) // 2), y0)
    return torch.stack([x0, y0, w, h], dim=1)


def crop_flip_theta(boxes: torch.Tensor, flip: torch.Tensor, *, height: int,
                    width: int) -> torch.Tensor:
    """Affine matrices ``(B, 2, 3)`` for ``F.affine_grid`` that resize each box to the output.

    With ``align_corners=False`` output pixel centres land where a resize of the box puts them
    (OpenCV's convention): x_in = x0 + (u + 0.5) * w / S - 0.5, in normalised coordinates
    x_n = (w / W) * u_n + (2 * x0 + w) / W - 1. A flip negates the u_n coefficient.
    """
    x0, y0, w, h = boxes.unbind(1)
    theta = boxes.new_zeros((boxes.shape[0], 2, 3))
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    return theta


def crop_grid(boxes: torch.Tensor, flip: torch.Tensor, *, height: int, width: int,
              size: int) -> torch.Tensor:
    """The ``grid_sample`` grid ``(B, size, size, 2)`` that resizes each box (flipped where
    ``flip``) to ``size``, clamped to the centres of the box's edge pixels: a resize of the
    cropped array repeats its border rather than reading the pixels beyond it."""
    theta = crop_flip_theta(boxes, flip, height=height, width=width)
    grid = F.affine_grid(theta, [boxes.shape[0], 3, size, size], align_corners=False)
    x0, y0, w, h = (v.view(-1, 1, 1) for v in boxes.unbind(1))
    lo_x, hi_x = (2 * x0 + 1) / width - 1, (2 * (x0 + w) - 1) / width - 1
    lo_y, hi_y = (2 * y0 + 1) / height - 1, (2 * (y0 + h) - 1) / height - 1
    gx = torch.minimum(torch.maximum(grid[..., 0], lo_x), hi_x)
    gy = torch.minimum(torch.maximum(grid[..., 1], lo_y), hi_y)
    return torch.stack([gx, gy], dim=-1)


@dataclass
class RandAugmentParams:
    """Per-sample choices and strengths for the 13 ops (all ``(B, 13)`` or ``(B,)`` tensors)."""

    chosen: torch.Tensor  # (B, 13) bool: the ops this sample applies
    strength: torch.Tensor  # (B, 13) in [-1, 1]: each op's signed draw within its range


def sample_randaugment(batch: int, *, n: int, generator: torch.Generator) -> RandAugmentParams:
    """``n`` distinct ops per sample, uniformly (as ``A.SomeOf(replace=False)``), and strengths."""
    order = torch.rand((batch, NUM_RANDAUG_OPS), generator=generator).argsort(dim=1)
    chosen = torch.zeros((batch, NUM_RANDAUG_OPS), dtype=torch.bool)
    chosen.scatter_(1, order[:, :n], True)
    strength = 2 * torch.rand((batch, NUM_RANDAUG_OPS), generator=generator) - 1
    return RandAugmentParams(chosen=chosen, strength=strength)


# ---------------------------------------------------------------------------------------------
# The ops, on float images holding integer values in [0, 255], shape (B, 3, S, S)
# ---------------------------------------------------------------------------------------------


def _to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` on ``like``'s device and dtype, copied without waiting for the device's queue."""
    return t.to(device=like.device, dtype=like.dtype, non_blocking=True)


def _as_uint8_values(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255)


def affine(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Warp by ``theta`` (B, 2, 3, output -> input, normalised); outside pixels become ``fill``."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    shifted = x - fill.view(1, 3, 1, 1)
    warped = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return _as_uint8_values(warped + fill.view(1, 3, 1, 1))


def _rotation(deg: torch.Tensor) -> torch.Tensor:
    t = deg.new_zeros((deg.shape[0], 2, 3))
    rad = torch.deg2rad(deg)
    t[:, 0, 0], t[:, 0, 1] = torch.cos(rad), -torch.sin(rad)
    t[:, 1, 0], t[:, 1, 1] = torch.sin(rad), torch.cos(rad)
    return t


def _shear(deg: torch.Tensor, axis: int) -> torch.Tensor:
    t = deg.new_zeros((deg.shape[0], 2, 3))
    t[:, 0, 0] = t[:, 1, 1] = 1.0
    t[:, axis, 1 - axis] = torch.tan(torch.deg2rad(deg))
    return t


def _translate(fraction: torch.Tensor, axis: int) -> torch.Tensor:
    t = fraction.new_zeros((fraction.shape[0], 2, 3))
    t[:, 0, 0] = t[:, 1, 1] = 1.0
    t[:, axis, 2] = 2 * fraction  # a fraction of the side is twice that in [-1, 1]
    return t


def whole_pixels(fraction: torch.Tensor, side: int) -> torch.Tensor:
    """A shift of ``fraction`` of a side of ``side`` pixels, truncated toward zero to whole
    pixels as albumentations' ``Affine(translate_percent=...)`` applies it."""
    return torch.trunc(fraction * side) / side


def brightness_contrast(x: torch.Tensor, alpha: torch.Tensor | float,
                        beta: torch.Tensor | float) -> torch.Tensor:
    """``x * alpha + 255 * beta`` per sample (albumentations' RandomBrightnessContrast)."""
    alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    beta = torch.as_tensor(beta, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    return _as_uint8_values(x * alpha + 255.0 * beta)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (ITU-R 601 luma, as OpenCV's RGB2GRAY) by ``factor``."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    gray = _as_uint8_values((x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True))
    f = factor.view(-1, 1, 1, 1)
    return _as_uint8_values(x * f + gray * (1 - f))


def sharpen(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """3x3 kernel (1 - a) * identity + a * (Laplacian + identity), reflect-101 borders."""
    a = alpha.view(-1, 1, 1, 1)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # torch's "reflect" is OpenCV's REFLECT_101
    neighbours = F.avg_pool2d(padded, 3, stride=1) * 9 - x  # sum of the 8 neighbours
    return _as_uint8_values(x + a * (8 * x - neighbours))


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` high bits of every value."""
    step = (2.0 ** (8 - bits)).view(-1, 1, 1, 1)
    return torch.floor(x / step) * step


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert values at or above ``threshold`` (a fraction of 255)."""
    return torch.where(x >= 255.0 * threshold.view(-1, 1, 1, 1), 255.0 - x, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation as OpenCV's ``equalizeHist``.

    lut[v] = round((cdf[v] - cdf[first]) * 255 / (pixels - hist[first])), ``first`` the lowest
    value present; a channel of one value is left alone. (Albumentations' AutoContrast with its
    default ``method="cdf"`` builds the same table from a histogram binned slightly differently,
    a few levels apart at most, so both ops use this function.)
    """
    b, c, h, w = x.shape
    values = x.reshape(b * c, h * w).long()  # (B*3, H*W)
    hist = torch.zeros((b * c, 256), dtype=torch.float64, device=x.device)
    hist.scatter_add_(1, values, torch.ones_like(values, dtype=torch.float64))
    cdf = hist.cumsum(1)
    first = (hist > 0).float().argmax(1, keepdim=True)  # (B*3, 1) lowest value present
    first_count = hist.gather(1, first)  # == cdf at ``first``: nothing lies below it
    denominator = (h * w) - first_count
    lut = ((cdf - first_count) * 255.0 / denominator.clamp(min=1)).round().clamp(0, 255)
    lut = torch.where(denominator > 0, lut, torch.arange(256, device=x.device, dtype=lut.dtype))
    return lut.gather(1, values).reshape(b, c, h, w).to(x.dtype)


def op_values(strength: torch.Tensor, magnitude: float) -> torch.Tensor:
    """Each sample's parameter for each op of ``RANDAUGMENT`` ``(B, 13)``, from its draws
    ``strength`` ``(B, 13)`` in [-1, 1]: uniform over the op's ``range(magnitude)``. Signed ops
    scale the draw; the others go from ``base`` by ``unit = (strength + 1) / 2`` of their reach;
    integer ops take ``reach + 1`` equally likely whole steps. All 13 columns at once."""
    def column(values: list[float] | list[bool]) -> torch.Tensor:
        return torch.tensor(values, dtype=strength.dtype if isinstance(values[0], float)
                            else torch.bool)

    reach = column([op.reach(magnitude) for op in RANDAUGMENT])
    toward = column([-r if op.decreasing else r for op, r in zip(RANDAUGMENT, reach.tolist(),
                                                                 strict=True)])
    base = column([op.base for op in RANDAUGMENT])
    low = column([op.range(magnitude)[0] for op in RANDAUGMENT])
    unit = (strength + 1) / 2
    steps = low + torch.minimum(torch.floor(unit * (reach + 1)), reach)
    values = torch.where(column([op.integer for op in RANDAUGMENT]), steps, base + toward * unit)
    return torch.where(column([op.signed for op in RANDAUGMENT]), reach * strength, values)


# Each row of vit.data.augmentation.RANDAUGMENT as a tensor op: (x (b, 3, S, S), its parameter
# (b,) on the CPU, the fill colour (3,)) -> x. The parameter's meaning is the table's.
_TENSOR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "rotate": lambda x, v, fill: affine(x, _rotation(v), fill),
    "shear_x": lambda x, v, fill: affine(x, _shear(v, axis=0), fill),
    "shear_y": lambda x, v, fill: affine(x, _shear(v, axis=1), fill),
    "translate_x": lambda x, v, fill: affine(x, _translate(whole_pixels(v, x.shape[-1]), axis=0),
                                             fill),
    "translate_y": lambda x, v, fill: affine(x, _translate(whole_pixels(v, x.shape[-2]), axis=1),
                                             fill),
    "brightness": lambda x, v, _: brightness_contrast(x, 1.0, _to(v, x)),
    "contrast": lambda x, v, _: brightness_contrast(x, _to(1 + v, x), 0.0),
    "saturation": lambda x, v, _: saturation(x, _to(1 + v, x)),
    "sharpen": lambda x, v, _: sharpen(x, _to(v, x)),
    "posterize": lambda x, v, _: posterize(x, _to(v, x)),
    "solarize": lambda x, v, _: solarize(x, _to(v, x)),
    "equalize": lambda x, _v, _: equalize(x),
    "autocontrast": lambda x, _v, _: equalize(x),  # nearly the same table: see equalize
}


# ---------------------------------------------------------------------------------------------
# The batch transform
# ---------------------------------------------------------------------------------------------


class BatchAugment:
    """``uint8 (B, H, W, 3)`` on any device -> normalised ``float32 (B, 3, S, S)``.

    ``train=False`` only normalises (the stored images are already the evaluation crops).
    Random draws come from a CPU ``torch.Generator`` passed per call, so they are the same on
    every device and for every resume point.
    """

    def __init__(self, *, img_size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool = True, recipe: AugmentRecipe = DEFAULT_AUGMENT):
        self.img_size = img_size
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.train = train
        self.recipe = recipe

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 255.0 - _to(self.mean, x).view(1, 3, 1, 1)) / _to(self.std, x).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, *,
                 shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Augment (training) or just normalise (evaluation) one batch.

        ``shard=(rank, world_size)``: this batch holds every ``world_size``-th sample of a
        global batch, starting at ``rank`` (how ``EpochSampler`` shards). The random draws are
        made for the whole global batch and this shard's rows kept, so torchrun processes
        together augment exactly as one process with the global batch would.
        """
        _check_images(images)
        if not self.train:
            return self.apply(images, None)
        if generator is None:
            raise ValueError("training augmentation needs a generator")
        height, width = images.shape[1:3]
        return self.apply(images, self.draw(images.shape[0], height=height, width=width,
                                            generator=generator, shard=shard))

    def draw(self, batch: int, *, height: int, width: int, generator: torch.Generator,
             shard: tuple[int, int] = (0, 1)) -> AugmentDraws:
        """Every random choice for one batch of ``batch`` rows (this shard's), on the CPU.

        The draws for several batches, each from its own generator, can be joined with
        ``AugmentDraws.cat`` and applied in one call: each row comes out as it would alone.
        """
        (rank, world), n = shard, batch * shard[1]  # draws for the global batch, then this shard
        boxes = sample_crop_boxes(n, height=height, width=width, scale=self.recipe.scale,
                                  ratio=self.recipe.ratio, generator=generator)[rank::world]
        flip = (torch.rand(n, generator=generator) < self.recipe.hflip)[rank::world]
        randaug = None
        if self.recipe.randaug_n > 0:
            p = sample_randaugment(n, n=self.recipe.randaug_n, generator=generator)
            randaug = RandAugmentParams(chosen=p.chosen[rank::world],
                                        strength=p.strength[rank::world])
        return AugmentDraws(boxes=boxes, flip=flip, randaug=randaug)

    def apply(self, images: torch.Tensor, draws: AugmentDraws | None) -> torch.Tensor:
        """``uint8 (B, H, W, 3)`` -> normalised ``float32 (B, 3, S, S)`` with these draws
        (``None``: evaluation, only normalise)."""
        _check_images(images)
        x = images.permute(0, 3, 1, 2).float()  # (B, H, W, 3) -> (B, 3, H, W)
        if draws is None:
            if x.shape[-2:] != (self.img_size, self.img_size):
                raise ValueError(f"evaluation images must be stored at {self.img_size} px, "
                                 f"got {tuple(x.shape[-2:])}")
            return self.normalize(x)
        if draws.boxes.shape[0] != x.shape[0]:
            raise ValueError(f"draws for {draws.boxes.shape[0]} images, got {x.shape[0]}")
        x = self.crop_flip(x, draws.boxes, draws.flip)
        if draws.randaug is not None:
            x = self.randaugment(x, draws.randaug)
        return self.normalize(x)

    def crop_flip(self, x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        grid = crop_grid(_to(boxes, x), flip.to(x.device, non_blocking=True), height=height,
                         width=width, size=self.img_size)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return _as_uint8_values(out)

    def randaugment(self, x: torch.Tensor, p: RandAugmentParams) -> torch.Tensor:
        """Each sample applies its chosen ops in the table's order (as ``A.SomeOf`` sorts
        them). One pass per op of the table, over the samples that chose it: the number of
        tensor ops does not grow with the batch."""
        fill = _to(torch.tensor(fill_value(self.mean.tolist())), x)
        values = op_values(p.strength, self.recipe.randaug_m)  # (B, 13) on the CPU
        for k, op in enumerate(RANDAUGMENT):
            rows = p.chosen[:, k].nonzero()[:, 0]  # the samples that picked op k (on the CPU:
            if rows.numel():                       # no wait for the device)
                picked = rows.to(x.device, non_blocking=True)
                x[picked] = _TENSOR_OPS[op.name](x[picked], values[rows, k], fill)
        return x


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {images.dtype} "
                         f"{tuple(images.shape)}")


@dataclass
class AugmentDraws:
    """The random choices of ``BatchAugment.draw`` for a batch (CPU tensors, one row per image)."""

    boxes: torch.Tensor  # (B, 4) crop boxes (x0, y0, w, h)
    flip: torch.Tensor  # (B,) bool
    randaug: RandAugmentParams | None

    @staticmethod
    def cat(parts: Sequence[AugmentDraws]) -> AugmentDraws:
        randaug = None
        if parts[0].randaug is not None:
            randaug = RandAugmentParams(chosen=torch.cat([d.randaug.chosen for d in parts]),
                                        strength=torch.cat([d.randaug.strength for d in parts]))
        return AugmentDraws(boxes=torch.cat([d.boxes for d in parts]),
                            flip=torch.cat([d.flip for d in parts]), randaug=randaug)


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A 63-bit seed that depends on all three numbers (for the augmentation of one batch)."""
    # The trailing 0 (once the process rank) keeps the draws that produced the CPU results
    # recorded in benchmarks/RESULTS.md.
    state = np.random.SeedSequence([seed % 2**32, epoch, batch, 0]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


class MemoryLoader:
    """Batches ``(x, y)`` from a ``uint8`` image tensor, augmented on the tensor's device.

    Same contract as the DataLoader from ``vit.data.loader.build_loader``: an ``EpochSampler``
    orders and shards the indices, ``vit.data.loader.set_epoch(loader, epoch, start_batch)``
    before each epoch, and ``len()`` counts this process's batches. With ``drop_last``
    (training), ``world_size`` processes (``shard=(rank, world_size)``) with batch B see and
    augment exactly what one process with batch B x world_size would.

    ``aug_batches=K`` augments K batches in one call (each with the draws of its own seeded
    generator, so every batch is the same as with K=1): on a GPU the ~500 small kernels of an
    augmentation call are launched once per K batches instead of once per batch.
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int], *, augment: BatchAugment,
                 batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 shard: tuple[int, int] = (0, 1), weights: Sequence[float] | None = None,
                 aug_batches: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if aug_batches < 1:
            raise ConfigError(f"data.aug_batches must be at least 1, got {aug_batches}")
        if len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
        self.images = images
        self.targets = torch.as_tensor(list(targets), dtype=torch.long).to(images.device)
        self.augment = augment
        self.batch_size, self.aug_batches = batch_size, aug_batches
        self.drop_last = drop_last
        rank, world_size = shard  # this process's place among the torchrun processes
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.sampler = EpochSampler(images.shape[0], shuffle=shuffle, seed=seed, rank=rank,
                                    world_size=world_size, weights=weights, drop_last=drop_last,
                                    batch_size=batch_size)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        count = len(self)
        for first in range(0, count, self.aug_batches):
            batches = range(first, min(first + self.aug_batches, count))
            index = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in batches]
            sizes = [len(i) for i in index]
            joined = torch.cat(index).to(self.images.device, non_blocking=True)
            draws = None
            if self.augment.train:
                draws = AugmentDraws.cat([self._draws(b, rows)
                                          for b, rows in zip(batches, sizes, strict=True)])
            x = self.augment.apply(self.images[joined], draws)  # (sum(sizes), 3, S, S)
            yield from zip(x.split(sizes), self.targets[joined].split(sizes), strict=True)

    def _draws(self, b: int, rows: int) -> AugmentDraws:
        """Batch ``b``'s draws: the same in every process (each keeps its shard's rows), seeded
        by the batch's number counted from the epoch's start, so a resume draws them again."""
        batch = self.sampler.start // self.batch_size + b
        g = torch.Generator().manual_seed(batch_seed(self.seed, self.sampler.epoch, batch))
        height, width = self.images.shape[1:3]
        return self.augment.draw(rows, height=height, width=width, generator=g,
                                 shard=(self.rank, self.world_size))
