"""The training Dataset: ``(path, target)`` samples -> augmented tensors, bad files skipped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vit.data.folders import Sample
from vit.data.images import UnreadableImageError, load_image
from vit.errors import DataError
from vit.io import append_jsonl

__all__ = ["ImageFolderDataset"]

logger = logging.getLogger(__name__)


def _to_float_tensor(image: Image.Image) -> torch.Tensor:
    array = np.array(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset):
    """``(path, target)`` samples -> ``(float tensor CHW, target)``.

    A file that cannot be decoded is recorded in ``skipped`` (per process: loader workers each
    keep their own list) and replaced by the next readable sample, so one bad file does not
    stop training; the replacement depends only on which files are bad, so a resumed run skips
    the same way. With ``skip_log`` (a JSON-lines file) every process, loader workers included,
    also appends ``{"path", "reason"}`` there for the main process to report (``mark_bad``
    tells later workers what is already known); without it each skip is logged as a warning.
    ``max_consecutive_failures`` bad files in a row raise ``DataError``. Without a transform,
    images become tensors in [0, 1] at their own size.

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
        skip_log: str | None = None,
    ):
        if not samples:
            raise DataError("the dataset has no samples; check the image folder")
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.max_consecutive_failures = max_consecutive_failures
        self.skip_log = skip_log
        self.skipped: list[dict[str, str]] = []
        self._bad: set[int] = set()
        self._seeded_worker: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def mark_bad(self, paths: set[str]) -> None:
        """Files already known to be unreadable: skipped without another attempt (workers
        started later inherit this; the samples that replace them do not change)."""
        self._bad.update(i for i, (p, _) in enumerate(self.samples) if p in paths)

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
            record = {"path": path, "reason": exc.reason}
            self.skipped.append(record)
            if self.skip_log is not None:
                append_jsonl(self.skip_log, record)
                logger.debug("Skipping unreadable image %s (%s)", path, exc.reason)
            else:
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
            "check the data with `vit check DIR`"
        )
