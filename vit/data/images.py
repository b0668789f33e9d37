"""Decoding image files so that a bad file is a reason, never a crash.

``load_image`` decodes any file Pillow reads into RGB (EXIF orientation applied, transparency on
white, 16-bit scaled to 8 bits) or raises ``UnreadableImageError`` with the reason. ``preflight``
decodes a whole data set once, in threads, and keeps the readable images (training checks
cheaply instead, and `vit check` decodes in processes: ``vit.data.check``).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from vit.data.folders import Sample
from vit.errors import DataError

__all__ = [
    "UnreadableImageError",
    "load_image",
    "load_image_bytes",
    "to_rgb",
    "preflight",
    "check_classes_readable",
]

logger = logging.getLogger(__name__)


class UnreadableImageError(DataError):
    """An image file that cannot be decoded. ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


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


def to_rgb(img: Image.Image) -> Image.Image:
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
    return _decode(path, path)


def load_image_bytes(data: bytes, name: str) -> Image.Image:
    """``load_image`` for the bytes of an image file (a shard's record); ``name`` says which
    in the error."""
    if not data:
        raise UnreadableImageError(name, "empty file (zero bytes)")
    return _decode(io.BytesIO(data), name)


def _decode(source: str | io.BytesIO, name: str) -> Image.Image:
    try:
        with Image.open(source) as img:
            _check_pixel_count(img, name)
            img.seek(0)
            img.load()
            img = _apply_exif_orientation(img, name)
            return to_rgb(img)
    except UnreadableImageError:
        raise
    except Exception as exc:  # decoders raise many types; every one means "unreadable"
        raise UnreadableImageError(name, _failure_reason(name, exc)) from exc


def decode_reason(path: str) -> str | None:
    """Why ``path`` cannot be decoded, or None when it can (a full decode)."""
    try:
        load_image(path)
    except UnreadableImageError as exc:
        return exc.reason
    return None


def _check_chunk(paths: list[str]) -> list[str | None]:
    return [decode_reason(p) for p in paths]


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
