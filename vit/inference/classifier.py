"""Classify images with a trained checkpoint.

    from vit import Classifier
    clf = Classifier.from_checkpoint("runs/x/best.pt")
    clf.predict(["cat.jpg", "dog.png"], topk=3)   # [[("cat", 0.91), ...], [("dog", 0.88), ...]]

Everything comes from the checkpoint file: the architecture, the class names and the evaluation
preprocessing (resize, centre crop, normalisation), which is the same pipeline the model saw on
its validation images during training (``vit.data.transforms``: ``eval_geometry``, then
``normalize_transform``).

An image can be given as
  * a path (``str`` or ``os.PathLike``), decoded by ``vit.data.images.load_image``;
  * a ``PIL.Image`` in any mode (converted to RGB; transparency becomes white, as for files);
  * a ``numpy`` array, HxWx3 (or HxW grey) ``uint8`` in 0..255;
  * a ``torch`` tensor, CxHxW with C = 3 (or 1), ``uint8`` in 0..255 or floating point in 0..1
    (what ``torchvision.transforms.ToTensor`` gives); floats are rounded to 8 bits, as a file
    would be;
  * a list of these, or a 4-D NxCxHxW tensor / NxHxWx3 array holding N images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from vit.data.images import UnreadableImageError, load_image, to_rgb
from vit.data.transforms import eval_geometry, normalize_transform
from vit.errors import CheckpointError, ConfigError, VitError
from vit.inference.tta import check_tta, tta_views
from vit.runtime import autocast, inference_precision, resolve_device

__all__ = [
    "ImageInput",
    "ImageInputError",
    "Classifier",
    "FilePrediction",
    "FileProbabilities",
    "to_rgb_array",
    "top_labels",
]

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
PREPROCESS_KEYS = ("img_size", "mean", "std", "crop_pct")
_FLOAT_TOLERANCE = 1e-3  # float pixels may stray this far outside [0, 1] (rounding noise)


class ImageInputError(VitError, ValueError):
    """An in-memory image of a shape, dtype or value range that ``Classifier`` cannot use."""


# ---------------------------------------------------------------------------------------------
# In-memory images -> HxWx3 uint8
# ---------------------------------------------------------------------------------------------


def _describe(x: np.ndarray | torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}"


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ImageInputError(
            f"numpy images must be uint8 in 0..255, got {_describe(array)}; for floats in 0..1 "
            "use (array * 255).round().astype(np.uint8)")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageInputError(f"numpy images must be HxWx3 (RGB) or HxW, got {_describe(array)}")
    return np.ascontiguousarray(array)


def _float_to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    lo, hi = float(tensor.min()), float(tensor.max())
    if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
        raise ImageInputError(
            f"float image tensors must hold values in 0..1, got {lo:.3g}..{hi:.3g}; pass the "
            "image before normalisation (the classifier normalises it itself)")
    return (tensor.float() * 255).round().clamp(0, 255).to(torch.uint8)


def _tensor_to_rgb(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ImageInputError(
            f"image tensors must be CxHxW with C = 3 (or 1), got {_describe(tensor)}; for HxWx3 "
            "data pass a numpy array, or use tensor.permute(2, 0, 1)")
    if tensor.is_floating_point():
        tensor = _float_to_uint8(tensor)
    elif tensor.dtype != torch.uint8:
        raise ImageInputError(f"image tensors must be uint8 or float, got {_describe(tensor)}")
    return _array_to_rgb(tensor.permute(1, 2, 0).numpy())


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """One image in any supported form -> HxWx3 uint8 array (see the module docstring).

    A path that cannot be decoded raises ``UnreadableImageError``; an array or tensor of the
    wrong shape, dtype or range ``ImageInputError``.
    """
    if isinstance(image, (str, os.PathLike)):
        return np.asarray(load_image(image))
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))  # same RGB conversion as for files
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb(image)
    raise ImageInputError(
        f"cannot classify an object of type {type(image).__name__}; pass a path, a PIL image, "
        "an HxWx3 uint8 array, a CxHxW tensor, or a list of these")


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """A single image -> [image]; a list, tuple or 4-D batch -> its images."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def _check_topk(topk: int) -> None:
    if topk < 1:
        raise ConfigError(f"topk must be at least 1, got {topk}")


def top_labels(
    probs: torch.Tensor, classes: Sequence[str], topk: int
) -> list[list[tuple[str, float]]]:
    """(N, C) probabilities -> per row the ``topk`` (label, probability), most likely first.

    ``topk`` is clipped to the number of classes; it must be at least 1.
    """
    _check_topk(topk)
    k = min(topk, len(classes))
    values, indices = probs.topk(k, dim=1)
    return [
        [(classes[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
        for row_p, row_i in zip(values, indices, strict=True)
    ]


@dataclass(frozen=True)
class FilePrediction:
    """The top-k predictions for one file, or why it could not be read."""

    path: str
    predictions: list[tuple[str, float]] | None
    error: str | None = None


@dataclass(frozen=True)
class FileProbabilities:
    """Class probabilities for a list of files, some of which may be unreadable.

    ``probs`` has one row per readable file, in the order of ``paths``; ``errors[i]`` is the
    reason file ``i`` was skipped, or None.
    """

    paths: list[str]
    errors: list[str | None]
    probs: torch.Tensor

    @property
    def readable(self) -> list[int]:
        """Indices into ``paths`` of the rows of ``probs``."""
        return [i for i, error in enumerate(self.errors) if error is None]


# ---------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------


def _check_preprocess(preprocess: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in PREPROCESS_KEYS if k not in preprocess]
    if missing:
        raise CheckpointError(
            f"the checkpoint's preprocess settings lack {missing}; it needs {list(PREPROCESS_KEYS)}"
            " (was it written by this package?)")
    return {k: preprocess[k] for k in PREPROCESS_KEYS}


def _check_classes(model: nn.Module, classes: Sequence[str]) -> list[str]:
    num_outputs = getattr(model, "num_classes", None)
    if num_outputs is not None and num_outputs != len(classes):
        raise CheckpointError(
            f"the model has {num_outputs} outputs but the checkpoint names {len(classes)} "
            "classes; the checkpoint is inconsistent, re-export it from the training run")
    return [str(c) for c in classes]


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    return batch_size


class Classifier:
    """A model in eval mode with its class names and evaluation preprocessing.

    ``model`` maps a normalised (N, 3, S, S) batch to (N, C) logits; ``preprocess`` holds
    ``img_size``, ``mean``, ``std`` and ``crop_pct``. Most users want ``from_checkpoint``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        classes: Sequence[str],
        preprocess: Mapping[str, Any],
        device: str | torch.device = "auto",
        batch_size: int = 64,
    ):
        self.batch_size = _check_batch_size(batch_size)
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.model = model.eval().to(self.device)
        self.classes = _check_classes(model, classes)
        self.preprocess = _check_preprocess(preprocess)
        self.precision = inference_precision(self.device)
        p = self.preprocess
        self._geometry = eval_geometry(p["img_size"], p["crop_pct"])
        self._normalise = normalize_transform(mean=p["mean"], std=p["std"])

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], *, device: str | torch.device = "auto",
        batch_size: int = 64,
    ) -> Classifier:
        """Load a training checkpoint (``.pt``) or an exported ``.safetensors`` (+ JSON)."""
        from vit.models.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path, map_location="cpu")
        model = model_from_checkpoint(ckpt)
        return cls(model, classes=ckpt["classes"], preprocess=ckpt["preprocess"],
                   device=device, batch_size=batch_size)

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike[str], *, device: str | torch.device = "auto",
        batch_size: int = 64,
    ) -> Classifier:
        """A model pushed with ``vit push``: a Hugging Face Hub repository id
        ``user/name[@revision]`` (downloaded by huggingface_hub into its cache), or the folder
        ``vit push --to-folder`` wrote."""
        from vit.models.hub import WEIGHTS_NAME, hub_folder

        return cls.from_checkpoint(hub_folder(source) / WEIGHTS_NAME, device=device,
                                   batch_size=batch_size)

    @property
    def img_size(self) -> int:
        return int(self.preprocess["img_size"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.classes)} classes, img_size={self.img_size}, "
                f"device={self.device}, precision={self.precision})")

    def _batch_size(self, batch_size: int | None) -> int:
        return self.batch_size if batch_size is None else _check_batch_size(batch_size)

    # --- what the model sees ------------------------------------------------------------------

    def transform(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """The (N, 3, S, S) float batch the model sees: eval resize, centre crop, normalise."""
        return self.normalise(self.view(images))

    def view(self, images: ImageInput | Sequence[ImageInput]) -> list[np.ndarray]:
        """The images after the eval resize and centre crop, as HxWx3 uint8 (for overlays)."""
        return [self._geometry(image=to_rgb_array(image))["image"] for image in _as_list(images)]

    def normalise(self, views: Sequence[np.ndarray]) -> torch.Tensor:
        """``view``'s images -> the (N, 3, S, S) batch the model sees (``transform`` in two
        steps, for callers that need both without decoding twice)."""
        if not views:
            return torch.empty(0, 3, self.img_size, self.img_size)
        return torch.stack([self._normalise(v) for v in views])

    # --- predictions --------------------------------------------------------------------------

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor, *, tta: str | None = None) -> torch.Tensor:
        """Softmax of the model's logits for a transformed batch, as float32 on the CPU.

        ``tta`` ("flip" or "crops", ``vit.inference.tta``): the mean of the probabilities of
        several views of each image."""
        batch = batch.to(self.device, non_blocking=True)
        probs = None
        views = tta_views(batch, tta)
        for view in views:
            with autocast(self.device, self.precision):
                logits = self.model(view)
            p = logits.float().softmax(dim=-1)
            probs = p if probs is None else probs + p
        return (probs / len(views)).cpu()

    def predict_proba(
        self, images: ImageInput | Sequence[ImageInput], *, batch_size: int | None = None,
        tta: str | None = None,
    ) -> torch.Tensor:
        """(N, C) class probabilities on the CPU, rows in input order, columns ``classes``;
        ``tta="flip"|"crops"`` averages them over augmented views (``probabilities``)."""
        items, tta = _as_list(images), check_tta(tta)
        rows = [self.probabilities(self.transform(chunk), tta=tta)
                for chunk in _chunks(items, self._batch_size(batch_size))]
        return torch.cat(rows) if rows else torch.empty(0, len(self.classes))

    def predict(
        self, images: ImageInput | Sequence[ImageInput], topk: int = 5, *,
        batch_size: int | None = None, tta: str | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per image, the ``topk`` most likely (label, probability), most likely first.

        A single image still gives a list with one entry. A file that cannot be decoded raises
        ``UnreadableImageError``; use ``predict_files`` to skip such files instead. ``tta``:
        test-time augmentation, "flip" (2 views) or "crops" (10), probabilities averaged.
        """
        probs = self.predict_proba(images, batch_size=batch_size, tta=tta)
        return top_labels(probs, self.classes, topk)

    def _load_batch(self, paths: Sequence[str]) -> tuple[list[np.ndarray], list[str | None]]:
        arrays, errors = [], []
        for path in paths:
            try:
                arrays.append(to_rgb_array(path))
                errors.append(None)
            except UnreadableImageError as e:
                logger.warning("skipping %s: %s", path, e.reason)
                errors.append(e.reason)
        return arrays, errors

    def predict_proba_files(
        self, paths: Sequence[str | os.PathLike[str]], *, batch_size: int | None = None,
        show_progress: bool = False, tta: str | None = None,
    ) -> FileProbabilities:
        """Probabilities for image files; unreadable files are skipped with a warning.

        A progress bar (stderr) is shown with ``show_progress`` when there is more than one batch.
        """
        names, tta = [os.fspath(p) for p in paths], check_tta(tta)
        chunks = list(_chunks(names, self._batch_size(batch_size)))
        errors: list[str | None] = []
        rows: list[torch.Tensor] = []
        with tqdm(total=len(names), desc="predict", unit="img", leave=False,
                  disable=not show_progress or len(chunks) < 2) as bar:
            for chunk in chunks:
                arrays, chunk_errors = self._load_batch(chunk)
                errors.extend(chunk_errors)
                if arrays:
                    rows.append(self.probabilities(self.transform(arrays), tta=tta))
                bar.update(len(chunk))
        probs = torch.cat(rows) if rows else torch.empty(0, len(self.classes))
        return FileProbabilities(paths=names, errors=errors, probs=probs)

    def predict_files(
        self, paths: Sequence[str | os.PathLike[str]], topk: int = 5, *,
        batch_size: int | None = None, show_progress: bool = False, tta: str | None = None,
    ) -> list[FilePrediction]:
        """``predict`` for files, in input order; an unreadable file gets ``error`` set instead."""
        _check_topk(topk)  # before the work, not after it
        scores = self.predict_proba_files(paths, batch_size=batch_size,
                                          show_progress=show_progress, tta=tta)
        labels = iter(top_labels(scores.probs, self.classes, topk))
        return [
            FilePrediction(path, None, error) if error is not None
            else FilePrediction(path, next(labels))
            for path, error in zip(scores.paths, scores.errors, strict=True)
        ]
