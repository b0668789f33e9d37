"""Image-folder data: scanning, robust decoding, splits, augmentation, class balancing, loaders.

The expected layout is ``root/<class>/<image>`` (images may sit in sub-folders of a class
folder), optionally split as ``root/train/<class>/...`` and ``root/val/<class>/...``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from vit.errors import ConfigError, DataError

# albumentations asks PyPI for a newer version on every import (and warns offline); skip that
# unless the user has set the variable themselves.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A
from albumentations.pytorch import ToTensorV2

__all__ = [
    "IMG_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "UnreadableImageError",
    "FolderScan",
    "is_image_file",
    "resolve_data_dirs",
    "scan_folder",
    "load_image",
    "preflight",
    "stratified_split",
    "class_counts",
    "balanced_class_weights",
    "build_data_report",
    "resolve_crop_pct",
    "ImageTransform",
    "build_transform",
    "normalize_transform",
    "eval_geometry",
    "ImageFolderDataset",
]

logger = logging.getLogger(__name__)

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_VAL_DIR_NAMES = ("val", "valid", "validation")
_JUNK_DIR_NAMES = {"__MACOSX"}  # metadata folders that zip tools add; never a class

Sample = tuple[str, int]


class UnreadableImageError(DataError):
    """An image file that cannot be decoded. ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


# ---------------------------------------------------------------------------------------------
# Folder layout and scanning
# ---------------------------------------------------------------------------------------------


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of ``IMG_EXTENSIONS`` (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMG_EXTENSIONS


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _JUNK_DIR_NAMES


def _visible_subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _check_is_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check the path")
    if not path.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder of class sub-folders")


def resolve_data_dirs(data_dir: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """Find the training folder and the optional validation folder inside ``data_dir``.

    ``data_dir/train/<class>/...`` (with optional ``data_dir/val/<class>/...``; ``valid`` and
    ``validation`` are accepted too) returns ``(data_dir/train, data_dir/val or None)``.
    Otherwise ``data_dir/<class>/...`` returns ``(data_dir, None)``.
    """
    root = Path(data_dir).expanduser()
    _check_is_dir(root, "data folder")
    train_dir = root / "train"
    val_dir = next((root / n for n in _VAL_DIR_NAMES if (root / n).is_dir()), None)
    if not train_dir.is_dir():
        if val_dir is not None:
            raise DataError(
                f"{root} has a {val_dir.name}/ folder but no train/ folder; put the training "
                f"images in {train_dir}/<class>/ or use the layout {root}/<class>/<image>"
            )
        return root, None
    expected = {"train", "test", *_VAL_DIR_NAMES}
    others = [p.name for p in _visible_subdirs(root) if p.name not in expected]
    if others:
        logger.warning("Ignoring folders %s in %s (using train/ and val/ only)", others, root)
    return train_dir, val_dir


@dataclass
class FolderScan:
    """What ``scan_folder`` found: ``(path, target)`` samples, class names and unused files."""

    samples: list[Sample]
    classes: list[str]
    ignored: list[str] = field(default_factory=list)


def _list_class_files(class_dir: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) under ``class_dir``, recursively, skipping hidden entries."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if _is_hidden(name):
                continue
            path = os.path.join(dirpath, name)
            (images if is_image_file(name) else others).append(path)
    return sorted(images), sorted(others)


def _check_class_dirs(root: Path, found: list[str], classes: Sequence[str] | None) -> list[str]:
    """The class list to use: the sub-folders found, or ``classes`` checked against them."""
    if classes is None:
        if not found:
            top_images = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
            hint = (f" ({len(top_images)} images sit directly in it)" if top_images else "")
            raise DataError(
                f"no class sub-folders in {root}{hint}; expected {root}/<class_name>/<image>"
            )
        return found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{root} has class folders {unknown} that the training classes {list(classes)} "
            "lack; use the same class folders for training and validation"
        )
    missing = [c for c in classes if c not in found]
    if missing:
        logger.warning("%s has no folder for classes %s", root, missing)
    return list(classes)


def scan_folder(
    root: str | os.PathLike[str], *, classes: Sequence[str] | None = None
) -> FolderScan:
    """Index ``root/<class>/**/<image>``: samples sorted by class then path.

    Class names are the sorted sub-folder names, unless ``classes`` is given (e.g. the training
    classes when scanning a validation folder), which fixes names and target order.
    Non-image files are skipped and listed in ``FolderScan.ignored``; hidden files and folders
    are skipped silently. Raises ``DataError`` for a missing folder, no class folders, no
    images at all, or a class folder without images.
    """
    root = Path(root).expanduser()
    _check_is_dir(root, "image folder")
    found = [p.name for p in _visible_subdirs(root)]
    class_list = _check_class_dirs(root, found, classes)

    samples: list[Sample] = []
    ignored = sorted(str(p) for p in root.iterdir() if p.is_file() and is_image_file(p))
    empty: list[str] = []
    for target, name in enumerate(class_list):
        if name not in found:
            continue
        images, others = _list_class_files(root / name)
        ignored.extend(others)
        if not images:
            empty.append(name)
        samples.extend((path, target) for path in images)

    if not samples:
        raise DataError(
            f"no images in {root}; supported extensions: {', '.join(IMG_EXTENSIONS)} "
            f"({len(ignored)} other files ignored)"
        )
    if empty:
        raise DataError(
            f"class folders without images in {root}: {empty}; add images "
            f"({', '.join(IMG_EXTENSIONS)}) or remove the folders"
        )
    if ignored:
        logger.info("Ignored %d files in %s that are not images in a class folder, e.g. %s",
                    len(ignored), root, ignored[0])
    return FolderScan(samples, class_list, ignored)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _check_pixel_count(img: Image.Image, path: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise UnreadableImageError(
            path,
            f"too large ({img.width}x{img.height} = {img.width * img.height:,} pixels, limit "
            f"{limit:,} set by PIL.Image.MAX_IMAGE_PIXELS); downscale it or raise that limit",
        )


def _rescale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel 16-bit, 32-bit integer or float image to 0..255."""
    arr = values.astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and lo >= 0 and hi <= 65535):
        arr = arr / 257.0  # full 16-bit range: 65535 -> 255
    elif mode == "F" and lo >= 0 and hi <= 1:
        arr = arr * 255.0
    else:  # unknown range: stretch what is there
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        gray = _rescale_to_uint8(np.asarray(img), img.mode)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...


def _apply_exif_orientation(img: Image.Image, path: str) -> Image.Image:
    try:
        if img.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return img  # the common case; avoids the copy exif_transpose makes
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block should not make the pixels unusable
        logger.debug("Ignoring unreadable EXIF orientation of %s: %s", path, exc)
        return img


def _failure_reason(path: str, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large (decompression bomb protection): {exc}"
    if isinstance(exc, UnidentifiedImageError):
        try:
            if os.path.getsize(path) == 0:
                return "empty file (zero bytes)"
        except OSError:
            pass
        return "not an image, or a format Pillow cannot identify"
    if isinstance(exc, MemoryError):
        return "too large to decode in the available memory"
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated file ({text})"
    return f"corrupt image ({type(exc).__name__}: {text})"


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file fully into an RGB ``PIL.Image``.

    Applies the EXIF orientation, takes the first frame of animations, composites transparency
    on white and scales 16-bit images to 8 bits. Raises ``UnreadableImageError`` (with the
    reason) for missing, empty, truncated, corrupt, non-image or oversized files; the size
    limit is ``PIL.Image.MAX_IMAGE_PIXELS`` and is checked before any pixel is decoded.
    """
    path = str(path)
    try:
        with Image.open(path) as img:
            _check_pixel_count(img, path)
            img.seek(0)
            img.load()
            img = _apply_exif_orientation(img, path)
            return _to_rgb(img)
    except UnreadableImageError:
        raise
    except Exception as exc:  # decoders raise many types; every one means "unreadable"
        raise UnreadableImageError(path, _failure_reason(path, exc)) from exc


def _check_one(path: str) -> str | None:
    try:
        load_image(path)
    except UnreadableImageError as exc:
        return exc.reason
    return None


def _check_chunk(paths: list[str]) -> list[str | None]:
    return [_check_one(p) for p in paths]


def _default_workers() -> int:
    return min(8, 2 * (os.cpu_count() or 1))


def preflight(
    samples: Sequence[Sample], *, workers: int | None = None, chunk_size: int = 64
) -> tuple[list[Sample], list[dict[str, str]]]:
    """Decode every image once and drop the unreadable ones.

    Returns ``(good_samples, skipped)`` where ``skipped`` holds ``{"path", "reason"}`` dicts.
    Decoding runs in a thread pool (``workers`` threads; default ``2 * cpu_count``, at most 8;
    0 decodes in this thread). One warning is logged per bad file.
    """
    paths = [p for p, _ in samples]
    chunks = [paths[i:i + chunk_size] for i in range(0, len(paths), chunk_size)]
    workers = _default_workers() if workers is None else workers
    reasons: list[str | None] = []
    with tqdm(total=len(paths), desc="checking images", unit="img", disable=None) as bar:
        if workers <= 0:
            results: Iterable[list[str | None]] = map(_check_chunk, chunks)
            for chunk_reasons in results:
                reasons.extend(chunk_reasons)
                bar.update(len(chunk_reasons))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for chunk_reasons in pool.map(_check_chunk, chunks):
                    reasons.extend(chunk_reasons)
                    bar.update(len(chunk_reasons))

    good: list[Sample] = []
    skipped: list[dict[str, str]] = []
    for sample, reason in zip(samples, reasons, strict=True):
        if reason is None:
            good.append(sample)
        else:
            logger.warning("Skipping %s: %s", sample[0], reason)
            skipped.append({"path": sample[0], "reason": reason})
    return good, skipped


def check_classes_readable(root: Path, classes: Sequence[str], good: Sequence[Sample],
                           skipped: Sequence[dict[str, str]]) -> None:
    """Raise ``DataError`` when the pre-flight check left a class without a single image."""
    present = {t for _, t in good}
    empty = [name for t, name in enumerate(classes) if t not in present]
    if empty:
        raise DataError(
            f"class folders without readable images in {root}: {empty}; all "
            f"{len(skipped)} unreadable files are listed above; replace them or remove the folders")


# ---------------------------------------------------------------------------------------------
# Splits, class balance, report
# ---------------------------------------------------------------------------------------------


def stratified_split(
    targets: Sequence[int], *, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices per class into ``(train_idx, val_idx)``, both sorted.

    Each class with at least 2 images gets ``round(n * val_fraction)`` validation images,
    at least 1 and at most ``n - 1``; a class with 1 image stays in train. The split of a class
    depends only on ``seed``, the class id and the positions of that class's images.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not (
        0.0 < val_fraction < 1.0
    ):
        raise ConfigError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    labels = np.asarray(targets, dtype=np.int64)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if len(idx) < 2:
            logger.warning("Class %d has only %d image; it is not in the validation set",
                           int(cls), len(idx))
            train_idx.extend(idx.tolist())
            continue
        n_val = min(max(round(len(idx) * val_fraction), 1), len(idx) - 1)
        shuffled = np.random.default_rng([seed, int(cls)]).permutation(idx)
        val_idx.extend(shuffled[:n_val].tolist())
        train_idx.extend(shuffled[n_val:].tolist())
    return sorted(train_idx), sorted(val_idx)


def class_counts(targets: Sequence[int], num_classes: int) -> list[int]:
    """Number of samples per class id ``0 .. num_classes - 1``."""
    labels = np.asarray(targets, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes).tolist()


def balanced_class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Loss weights ``n_samples / (n_classes * count)``; 0 for a class without samples."""
    counts = torch.tensor(class_counts(targets, num_classes), dtype=torch.float32)
    weights = len(targets) / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


def _split_summary(classes: Sequence[str], samples: Sequence[Sample]) -> dict[str, Any]:
    counts = class_counts([t for _, t in samples], len(classes))
    return {"images": len(samples), "per_class": dict(zip(classes, counts, strict=True))}


def build_data_report(
    classes: Sequence[str],
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample] | None,
    skipped: Sequence[dict[str, str]],
    ignored_files: Sequence[str] | int,
) -> dict[str, Any]:
    """A JSON-serialisable summary: classes, per-class counts, skipped and ignored files."""
    train = _split_summary(classes, train_samples)
    nonzero = [c for c in train["per_class"].values() if c > 0]
    ignored_list = [] if isinstance(ignored_files, int) else [str(p) for p in ignored_files]
    return {
        "classes": list(classes),
        "num_classes": len(classes),
        "train": train,
        "val": None if val_samples is None else _split_summary(classes, val_samples),
        "imbalance_ratio": max(nonzero) / min(nonzero) if nonzero else None,
        "skipped": [{"path": str(s["path"]), "reason": str(s["reason"])} for s in skipped],
        "num_skipped": len(skipped),
        "num_ignored_files": ignored_files if isinstance(ignored_files, int)
        else len(ignored_list),
        "ignored_files_examples": ignored_list[:20],
    }


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Dataset and loader
# ---------------------------------------------------------------------------------------------


def _to_float_tensor(image: Image.Image) -> torch.Tensor:
    array = np.array(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset):
    """``(path, target)`` samples -> ``(float tensor CHW, target)``.

    A file that cannot be decoded is logged, recorded in ``skipped`` (per process: loader
    workers each keep their own list) and replaced by the next readable sample, so one bad
    file does not stop training. ``max_consecutive_failures`` bad files in a row raise
    ``DataError``. Without a transform, images become tensors in [0, 1] at their own size.

    Random augmentation is reproducible in one of two ways:

    * ``seed`` given: sample ``i`` in epoch ``e`` is augmented from the seed ``(seed, e, i)``,
      whatever the number of loader workers or where a resumed run starts. Call
      ``set_epoch(e)`` before every epoch, or every epoch repeats the same augmentations.
    * ``seed=None``: the transform's own random stream; each loader worker seeds it from
      PyTorch's per-worker seed, which a loader with a seeded ``generator`` makes reproducible
      for a fixed number of workers (see ``vit.data.loader.build_loader``).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        *,
        seed: int | None = None,
        max_consecutive_failures: int = 32,
    ):
        if not samples:
            raise DataError("the dataset has no samples; check the image folder")
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.max_consecutive_failures = max_consecutive_failures
        self.skipped: list[dict[str, str]] = []
        self._bad: set[int] = set()
        self._seeded_worker: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose per-sample augmentation seeds are used (with ``seed``)."""
        self.epoch = epoch

    def seed_transform(self, seed: int | None) -> None:
        """Seed the transform's random stream if it supports it (see ``ImageTransform``)."""
        if hasattr(self.transform, "set_seed"):
            self.transform.set_seed(seed)

    def _prepare_randomness(self, index: int) -> None:
        if self.seed is not None and hasattr(self.transform, "set_sample_seed"):
            self.transform.set_sample_seed(self.seed, self.epoch, index)
            return
        info = torch.utils.data.get_worker_info()
        if info is not None and self._seeded_worker != info.id:
            # Forked workers inherit one random state; without this they would all augment alike.
            self.seed_transform(info.seed % 2**32)
            self._seeded_worker = info.id

    def _load(self, index: int) -> Image.Image | None:
        if index in self._bad:
            return None
        path = self.samples[index][0]
        try:
            return load_image(path)
        except UnreadableImageError as exc:
            self._bad.add(index)
            self.skipped.append({"path": path, "reason": exc.reason})
            logger.warning("Skipping unreadable image %s (%s); using the next one instead",
                           path, exc.reason)
            return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        attempts = min(self.max_consecutive_failures, len(self.samples))
        for offset in range(attempts):
            i = (index + offset) % len(self.samples)
            image = self._load(i)
            if image is None:
                continue
            if self.transform is None:
                return _to_float_tensor(image), self.samples[i][1]
            self._prepare_randomness(index)
            return self.transform(image), self.samples[i][1]
        raise DataError(
            f"{attempts} consecutive images from {self.samples[index][0]} on cannot be read "
            f"(last reason: {self.skipped[-1]['reason'] if self.skipped else 'see log'}); "
            "check the data, e.g. with the preflight check enabled"
        )
