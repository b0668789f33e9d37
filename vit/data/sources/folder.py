"""An image folder: ``DIR/<class>/<image>`` (a stratified ``data.val_fraction`` held out), or
``DIR/train/<class>/...`` with ``DIR/val/<class>/...``; fed by albumentations workers or, with
``data.pipeline=memory``, decoded once onto the device (``vit.data.memory``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vit.config import Config
from vit.data.augmentation import AugmentRecipe
from vit.data.folders import resolve_data_dirs, scan_folder
from vit.data.images import check_classes_readable
from vit.data.sources.base import (
    DataSource,
    EvalSet,
    LoaderOptions,
    RunData,
    checked,
    match_classes,
    preflight_workers,
    sampler_weights,
    transforms,
)
from vit.data.splits import stratified_split
from vit.errors import DataError, VitError

__all__ = ["FolderSource", "EVAL_SUBDIRS", "resolve_eval_dir", "scan_eval_folder"]

logger = logging.getLogger(__name__)

EVAL_SUBDIRS = ("test", "val", "valid", "validation")  # in order of preference


class FolderSource(DataSource):
    """Any path the other sources do not claim: a folder of class folders."""

    name = "folder"

    def __init__(self, spec: str | os.PathLike[str]):
        super().__init__(spec)
        self.folder = spec  # the folder the images are in

    @classmethod
    def accepts(cls, spec: str | os.PathLike[str]) -> bool:  # noqa: ARG003
        return True

    def prepare(self, cfg: Config) -> RunData:
        """Scan, pre-flight check (the cheap one of ``vit.data.check``, cached per folder; the
        memory pipeline skips it, since decoding the images is a full check) and split."""
        d = cfg.data
        train_dir, val_dir = resolve_data_dirs(self.folder)
        check = dict(check_images=d.preflight and d.pipeline != "memory",
                     workers=preflight_workers(cfg), cache=d.cache)
        train = _scan(train_dir, check_classes=True, **check)
        if val_dir is not None:
            val = _scan(val_dir, **check)
            if val.classes != train.classes:
                raise VitError(f"{val_dir} has classes {val.classes} but {train_dir} has "
                               f"{train.classes}; they must match")
            data = RunData(root=train_dir, classes=train.classes, train_samples=train.samples,
                           val_samples=val.samples,
                           split={"kind": "folder", "val_dir": str(val_dir)},
                           skipped=train.skipped + val.skipped,
                           ignored=train.ignored + val.ignored, source=self)
        else:
            train_idx, val_idx = stratified_split(
                [t for _, t in train.samples], val_fraction=d.val_fraction, seed=cfg.train.seed)
            val_samples = [train.samples[i] for i in val_idx]
            split = {"kind": "stratified", "val_fraction": d.val_fraction,
                     "seed": cfg.train.seed, "val_files": [p for p, _ in val_samples]}
            data = RunData(root=train_dir, classes=train.classes,
                           train_samples=[train.samples[i] for i in train_idx],
                           val_samples=val_samples, split=split, skipped=train.skipped,
                           ignored=train.ignored, source=self)
        return checked(data, source=str(train_dir))

    def loaders(self, cfg: Config, data: RunData, options: LoaderOptions
                ) -> tuple[Any, Any, RunData]:
        if cfg.data.pipeline == "memory":
            return memory_loaders(cfg, data, options)
        return sample_loaders(cfg, data, options)

    def eval_set(self, model_classes: Sequence[str]) -> EvalSet:
        eval_dir = resolve_eval_dir(self.folder)
        eval_set = scan_eval_folder(eval_dir, model_classes)
        if eval_dir != Path(self.folder):
            return replace(eval_set, description=f"{eval_dir} (the {eval_dir.name}/ split of "
                                                 f"{self.spec})")
        return eval_set

    def held_out(self, classes: Sequence[str], *, split: dict[str, Any], split_file: Path
                 ) -> tuple[list[tuple[Path, int]], str]:
        """``DIR/val``, else the ``val_files`` of the run's split.json, else ``DIR`` itself
        (no train/)."""
        data = Path(self.folder)
        train_dir, val_dir = resolve_data_dirs(data)
        if val_dir is not None:
            samples = scan_folder(val_dir, classes=classes).samples
            return [(Path(p), label) for p, label in samples], str(val_dir)
        if split.get("kind") == "stratified":
            paths = [Path(p) for p in split["val_files"]]
            return [(p, classes.index(p.parent.name)) for p in paths
                    if p.parent.name in classes], f"{split_file} (val_files)"
        if train_dir != data:
            raise DataError(f"{data} has train/ but no val/, and {split_file} lists no held-out "
                            "files; pass a folder of held-out images (<class>/<image>) with "
                            "--data")
        samples = scan_folder(data, classes=classes).samples
        return [(Path(p), label) for p, label in samples], str(data)

    def trained_on(self) -> Callable[[Path], bool]:
        train_dir = resolve_data_dirs(self.folder)[0].resolve()
        return lambda path: path.is_relative_to(train_dir)


# --- scanning ---------------------------------------------------------------------------------


@dataclass
class _Scanned:
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[dict[str, str]]
    ignored: list[str]


def _scan(folder: Path, *, check_images: bool, workers: int, cache: bool,
          check_classes: bool = False) -> _Scanned:
    if not check_images:
        scan = scan_folder(folder)
        return _Scanned(classes=scan.classes, samples=scan.samples, skipped=[],
                        ignored=list(scan.ignored))
    from vit.data.check import checked_scan

    # the pre-flight check: headers and end markers, remembered per folder
    scan, samples, skipped = checked_scan(folder, workers=workers, cache=cache)
    if check_classes:
        check_classes_readable(folder, scan.classes, samples, skipped)
    return _Scanned(classes=scan.classes, samples=samples, skipped=skipped,
                    ignored=list(scan.ignored))


def resolve_eval_dir(data_dir: str | os.PathLike[str]) -> Path:
    """``DIR/test``, else ``DIR/val`` (or valid/validation), else ``DIR`` itself.

    A ``DIR`` with only a ``train/`` split is refused: evaluating on training images is almost
    always a mistake (pass ``DIR/train`` explicitly to do it anyway).
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} {'is a file' if root.exists() else 'does not exist'}"
                        "; pass a folder of class sub-folders")
    for name in EVAL_SUBDIRS:
        if (root / name).is_dir():
            return root / name
    if (root / "train").is_dir():
        raise DataError(
            f"{root} has a train/ folder but no test/ or val/ folder to evaluate on; pass "
            f"--data {root / 'train'} if you really want to evaluate on the training images")
    return root


def scan_eval_folder(eval_dir: str | os.PathLike[str], model_classes: Sequence[str]) -> EvalSet:
    """Scan ``eval_dir/<class>/...`` and label each image with the model's index of its class."""
    scan = scan_folder(eval_dir)
    match = match_classes(scan.classes, model_classes)
    samples = [(path, match.targets[scan.classes[t]]) for path, t in scan.samples
               if scan.classes[t] in match.targets]
    num_unknown = len(scan.samples) - len(samples)
    if match.unknown:
        logger.warning("the model does not know the classes %s; their %d images are left out",
                       match.unknown, num_unknown)
    if match.missing:
        logger.warning("no folder for the model's classes %s", match.missing)
    return EvalSet(root=Path(eval_dir), samples=samples, match=match,
                   num_unknown_images=num_unknown, description=str(eval_dir))


# --- loaders ----------------------------------------------------------------------------------


def sample_loaders(cfg: Config, data: RunData, options: LoaderOptions
                   ) -> tuple[Any, Any, RunData]:
    """Albumentations in loader workers over ``data``'s (path, label) samples; per-sample
    augmentation seeds (seed, epoch, index): resume and worker count change nothing. Loader
    workers append the files they cannot decode to ``options.skip_log``."""
    from vit.data import loader as loader_lib
    from vit.data.dataset import ImageFolderDataset

    train_tf, eval_tf = transforms(cfg, options.img_size)
    log = str(options.skip_log) if options.skip_log is not None else None
    train_set = ImageFolderDataset(data.train_samples, data.classes, train_tf,
                                   seed=cfg.train.seed, skip_log=log)
    val_set = ImageFolderDataset(data.val_samples, data.classes, eval_tf, skip_log=log)
    shard = dict(batch_size=options.batch_size, workers=cfg.data.workers, seed=cfg.train.seed,
                 rank=options.rank, world_size=options.world_size,
                 pin_memory=options.device.type == "cuda")
    train_loader = loader_lib.build_loader(
        train_set, shuffle=True, drop_last=True,
        weights=sampler_weights(cfg, data.train_targets, len(data.classes)), **shard)
    val_loader = loader_lib.build_loader(val_set, shuffle=False, drop_last=False, **shard)
    return train_loader, val_loader, data


def memory_loaders(cfg: Config, data: RunData, options: LoaderOptions
                   ) -> tuple[Any, Any, RunData]:
    """Decode both splits once into uint8 tensors on the device (unreadable files are skipped
    and reported there); augment batches on the device."""
    from vit.data import memory
    from vit.data.transforms import resolve_crop_pct

    d, img_size, device = cfg.data, options.img_size, options.device
    train_images, kept, skipped = memory.decode_images(
        [p for p, _ in data.train_samples], size=img_size, crop_pct=1.0,
        workers=max(d.workers, 1), desc="decoding training images")
    train_samples = [data.train_samples[i] for i in kept]
    check_classes_readable(data.root, data.classes, train_samples, skipped)
    val_images, val_kept, val_skipped = memory.decode_images(
        [p for p, _ in data.val_samples], size=img_size,
        crop_pct=resolve_crop_pct(img_size, d.crop_pct), workers=max(d.workers, 1),
        desc="decoding validation images")
    data = replace(data, train_samples=train_samples,
                   val_samples=[data.val_samples[i] for i in val_kept],
                   skipped=data.skipped + skipped + val_skipped)
    logger.info("data.pipeline=memory: %.0f MiB of uint8 images on %s",
                (train_images.numel() + val_images.numel()) / 2**20, device)

    norm = dict(img_size=img_size, mean=d.mean, std=d.std)
    train_aug = memory.BatchAugment(train=True, recipe=AugmentRecipe.of(d), **norm)
    shard = dict(batch_size=options.batch_size, seed=cfg.train.seed,
                 shard=(options.rank, options.world_size))
    train_loader = memory.MemoryLoader(
        train_images.to(device), data.train_targets, augment=train_aug, shuffle=True,
        drop_last=True, weights=sampler_weights(cfg, data.train_targets, len(data.classes)),
        aug_batches=d.aug_batches, **shard)
    val_loader = memory.MemoryLoader(
        val_images.to(device), [t for _, t in data.val_samples],
        augment=memory.BatchAugment(train=False, **norm), shuffle=False, drop_last=False,
        **shard)
    return train_loader, val_loader, data

