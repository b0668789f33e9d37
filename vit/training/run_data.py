"""The images of a run: scanned, checked, split, and fed by the pipeline ``data.pipeline`` names.

    data = prepare_data(cfg)                       # scan, pre-flight, split
    train_loader, val_loader, data = build_loaders(cfg, data, img_size=..., device=..., ...)

``albumentations``: per-image augmentation in loader workers (any data set). ``memory``: the
data set decoded once into a uint8 tensor on the device, augmented batch by batch there; its
decoding is the pre-flight check, and the files it cannot decode leave ``data``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vit.config import Config
from vit.data import loader as loader_lib
from vit.data.check import checked_scan
from vit.data.dataset import ImageFolderDataset
from vit.data.folders import resolve_data_dirs, scan_folder
from vit.data.images import check_classes_readable
from vit.data.labels import is_label_file
from vit.data.shards import is_shard_spec
from vit.data.splits import build_data_report, class_counts, stratified_split
from vit.data.transforms import build_transform, resolve_crop_pct
from vit.errors import ConfigError, DataError, VitError
from vit.text import plural

__all__ = ["RunData", "prepare_data", "build_loaders", "check_classes"]

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """The images of a run: classes, the split, and what was left out and why."""

    root: Path  # the training folder
    classes: list[str]
    train_samples: list[tuple[str, int]]
    val_samples: list[tuple[str, int]]
    split: dict[str, Any]  # what split.json records
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable: path, reason
    ignored: list[str] = field(default_factory=list)  # files that are not images
    train_shards: Any = None  # vit.data.shards.ShardSpec when training from shards
    val_shards: Any = None  # ... when validating on shards

    @property
    def train_targets(self) -> list[int]:
        if self.train_shards is not None:
            return _targets_of(self.train_shards)
        return [t for _, t in self.train_samples]

    @property
    def num_train(self) -> int:
        return self.train_shards.num_samples if self.train_shards else len(self.train_samples)

    @property
    def num_val(self) -> int:
        return self.val_shards.num_samples if self.val_shards else len(self.val_samples)

    def report(self) -> dict[str, Any]:
        """What data_report.json holds: the images counted are those not skipped (a file that
        passed the pre-flight check and failed in a loader worker stays in the samples)."""
        if self.train_shards is not None:
            return _shard_report(self)
        bad = {s["path"] for s in self.skipped}
        return build_data_report(self.classes, [s for s in self.train_samples if s[0] not in bad],
                                 [s for s in self.val_samples if s[0] not in bad],
                                 self.skipped, self.ignored)

    def add_skipped(self, records: list[dict[str, str]]) -> list[dict[str, str]]:
        """Add files found unreadable during training; returns those not known before."""
        known = {s["path"] for s in self.skipped}
        new = []
        for record in records:
            if record["path"] not in known:
                known.add(record["path"])
                new.append({"path": record["path"], "reason": record["reason"]})
        self.skipped.extend(new)
        return new


def prepare_data(cfg: Config) -> RunData:
    """Scan the image folder, pre-flight it and split it.

    The pre-flight check is the cheap one of ``vit.data.check`` (header and end marker, cached
    per folder); files that pass it and still fail are skipped by the loader workers. The memory
    pipeline skips it, since decoding the images into memory is a full check (``build_loaders``).
    """
    d = cfg.data
    if d.root is None:
        raise ConfigError("no data folder given: pass --data DIR (DIR/<class>/<image> or DIR/train/...)")
    if is_shard_spec(d.root):
        return _shard_data(cfg)
    if is_label_file(d.root):
        return _checked(_label_file_data(cfg), source=d.root)
    check_images = d.preflight and d.pipeline != "memory"
    train_dir, val_dir = resolve_data_dirs(d.root)
    check = dict(check_images=check_images, workers=d.workers, cache=d.cache)
    train = _scan(train_dir, check_classes=True, **check)
    if val_dir is not None:
        val = _scan(val_dir, **check)
        if val.classes != train.classes:
            raise VitError(f"{val_dir} has classes {val.classes} but {train_dir} has "
                           f"{train.classes}; they must match")
        data = RunData(root=train_dir, classes=train.classes, train_samples=train.samples,
                       val_samples=val.samples, split={"kind": "folder", "val_dir": str(val_dir)},
                       skipped=train.skipped + val.skipped, ignored=train.ignored + val.ignored)
    else:
        train_idx, val_idx = stratified_split(
            [t for _, t in train.samples], val_fraction=d.val_fraction, seed=cfg.train.seed)
        val_samples = [train.samples[i] for i in val_idx]
        split = {"kind": "stratified", "val_fraction": d.val_fraction, "seed": cfg.train.seed,
                 "val_files": [p for p, _ in val_samples]}
        data = RunData(root=train_dir, classes=train.classes,
                       train_samples=[train.samples[i] for i in train_idx],
                       val_samples=val_samples, split=split, skipped=train.skipped,
                       ignored=train.ignored)
    return _checked(data, source=str(train_dir))


def _checked(data: RunData, *, source: str) -> RunData:
    """A run that could only report nonsense stops here, before any work: fewer than two
    classes (every prediction is right), a class without a training image, an empty split."""
    check_classes(data.classes, class_counts([t for _, t in data.train_samples],
                                             len(data.classes)), source=source)
    if not data.train_samples or not data.val_samples:
        raise DataError(
            f"the split left {len(data.train_samples)} training and {len(data.val_samples)} "
            "validation images; add images or change --val-fraction")
    return data


def check_classes(classes: list[str], train_counts: list[int] | None, *, source: str) -> None:
    """At least two classes, each with a training image (``train_counts``, per class, when
    known); else one line that says what to do."""
    if len(classes) < 2:
        found = f"only one class, {classes[0]!r}" if classes else "no class"
        raise DataError(
            f"{source} has {found}: a classifier needs at least two (with one, every prediction "
            "is right and the accuracy means nothing); add a folder of images for each other "
            "class, DIR/<class>/<image>")
    empty = [name for name, n in zip(classes, train_counts or [], strict=False) if n == 0]
    if empty:
        raise DataError(
            f"no training image left for {plural(len(empty), 'class')} of {source}: {empty} "
            "(all of their images are held out for validation or unreadable); add images to "
            "them or remove them")


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
    # the pre-flight check: headers and end markers, remembered per folder
    scan, samples, skipped = checked_scan(
        folder, workers=min(max(workers, 1), os.cpu_count() or 1), cache=cache)
    if check_classes:
        check_classes_readable(folder, scan.classes, samples, skipped)
    return _Scanned(classes=scan.classes, samples=samples, skipped=skipped,
                    ignored=list(scan.ignored))


def build_loaders(cfg: Config, data: RunData, *, img_size: int, device: torch.device,
                  batch_size: int, rank: int = 0, world_size: int = 1,
                  skip_log: Path | None = None) -> tuple[Any, Any, RunData]:
    """Training and validation loaders for ``data.pipeline`` (albumentations workers, or memory),
    and the data they hold (the memory pipeline leaves out files it cannot decode). Loader
    workers append the files they cannot decode to ``skip_log``."""
    if data.train_shards is not None:
        return _shard_loaders(cfg, data, img_size=img_size, device=device,
                              batch_size=batch_size, rank=rank, world_size=world_size,
                              skip_log=skip_log)
    if cfg.data.pipeline == "memory":
        return _memory_loaders(cfg, data, img_size=img_size, device=device,
                               batch_size=batch_size, rank=rank, world_size=world_size)
    d = cfg.data
    train_tf, eval_tf = _transforms(cfg, img_size)
    # per-sample augmentation seeds (seed, epoch, index): resume and worker count change nothing
    log = str(skip_log) if skip_log is not None else None
    train_set = ImageFolderDataset(data.train_samples, data.classes, train_tf,
                                   seed=cfg.train.seed, skip_log=log)
    val_set = ImageFolderDataset(data.val_samples, data.classes, eval_tf, skip_log=log)
    shard = dict(batch_size=batch_size, workers=d.workers, seed=cfg.train.seed, rank=rank,
                 world_size=world_size, pin_memory=device.type == "cuda")
    train_loader = loader_lib.build_loader(
        train_set, shuffle=True, drop_last=True,
        weights=_sampler_weights(cfg, data.train_targets, len(data.classes)), **shard)
    val_loader = loader_lib.build_loader(val_set, shuffle=False, drop_last=False, **shard)
    return train_loader, val_loader, data


def _memory_loaders(cfg: Config, data: RunData, *, img_size: int, device: torch.device,
                    batch_size: int, rank: int, world_size: int) -> tuple[Any, Any, RunData]:
    """Decode both splits once into uint8 tensors on ``device`` (unreadable files are skipped
    and reported there); augment batches on the device."""
    from vit.data import memory

    d = cfg.data
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
    train_aug = memory.BatchAugment(train=True, scale=d.scale, ratio=d.ratio, hflip=d.hflip,
                                      randaug_n=d.randaug_n, randaug_m=d.randaug_m, **norm)
    shard = dict(batch_size=batch_size, seed=cfg.train.seed, rank=rank, world_size=world_size)
    train_loader = memory.MemoryLoader(
        train_images.to(device), data.train_targets, augment=train_aug, shuffle=True,
        drop_last=True, weights=_sampler_weights(cfg, data.train_targets, len(data.classes)),
        aug_batches=d.aug_batches, **shard)
    val_loader = memory.MemoryLoader(
        val_images.to(device), [t for _, t in data.val_samples],
        augment=memory.BatchAugment(train=False, **norm), shuffle=False, drop_last=False,
        **shard)
    return train_loader, val_loader, data


def _transforms(cfg: Config, img_size: int) -> tuple[Any, Any]:
    """The albumentations training and evaluation transforms of ``cfg.data`` (folders and
    shards alike)."""
    d = cfg.data
    aug = dict(img_size=img_size, mean=d.mean, std=d.std)
    train_tf = build_transform(
        train=True, scale=tuple(d.scale), ratio=tuple(d.ratio), hflip=d.hflip,
        randaug_n=d.randaug_n, randaug_m=d.randaug_m, **aug)
    return train_tf, build_transform(train=False, crop_pct=d.crop_pct, **aug)


def _sampler_weights(cfg: Config, targets: list[int], num_classes: int) -> list[float] | None:
    if cfg.data.sampler != "weighted":
        return None
    return _inverse_frequency_weights(targets, num_classes)


def _inverse_frequency_weights(targets: list[int], num_classes: int) -> list[float]:
    """Per-sample weights 1 / count(class): every class is drawn equally often."""
    counts = class_counts(targets, num_classes)
    return [1.0 / counts[t] for t in targets]


# --- label files ------------------------------------------------------------------------------


def _label_file_data(cfg: Config) -> RunData:
    """A CSV of path,label[,split] (``vit.data.labels``): rows marked ``val`` validate (the
    ``test`` rows are left for ``vit evaluate``); without a split column, or with no ``val``
    row, a stratified ``data.val_fraction`` of the training rows is held out. Missing files,
    empty labels and files that fail the quick check are skipped and reported."""
    from vit.data.check import quick_check_paths
    from vit.data.labels import read_label_file

    d = cfg.data
    labels = read_label_file(d.root)
    rows = labels.of_split("train") if labels.has_split else labels.rows
    val_rows = labels.of_split("val")
    skipped = list(labels.skipped)
    if d.preflight and d.pipeline != "memory":
        skipped += quick_check_paths([r.path for r in rows + val_rows],
                                     workers=min(max(d.workers, 1), os.cpu_count() or 1))
    bad = {s["path"] for s in skipped}
    classes = sorted({r.label for r in rows})
    index = {name: i for i, name in enumerate(classes)}
    train = [(r.path, index[r.label]) for r in rows if r.path not in bad]
    check_classes_readable(labels.path, classes, train, skipped)
    unknown = sorted({r.label for r in val_rows} - set(classes))
    if unknown:
        raise DataError(f"{labels.path}: the val rows have labels {unknown} that no train row "
                        "has; every class needs training images")
    split: dict[str, Any] = {"kind": "label_file", "file": str(labels.path)}
    if val_rows:
        val = [(r.path, index[r.label]) for r in val_rows if r.path not in bad]
        split["val_files"] = [p for p, _ in val]
    else:
        train_idx, val_idx = stratified_split([t for _, t in train],
                                              val_fraction=d.val_fraction, seed=cfg.train.seed)
        train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
        split.update(val_fraction=d.val_fraction, seed=cfg.train.seed,
                     val_files=[p for p, _ in val])
    logger.info("%s: %d rows for training, %d for validation, %d test rows left out, %d "
                "skipped", labels.path, len(train), len(val), len(labels.of_split("test")),
                len(skipped))
    return RunData(root=labels.path.parent, classes=classes, train_samples=train,
                   val_samples=val, split=split, skipped=skipped)


# --- shards -----------------------------------------------------------------------------------


def _targets_of(spec: Any) -> list[int]:
    """The training targets, from the class counts in _info.json ([] when it has none)."""
    if spec.per_class is None:
        return []
    return [c for c, n in enumerate(spec.per_class) for _ in range(n)]


def _shard_report(data: RunData) -> dict[str, Any]:
    def summary(spec: Any, samples: list) -> dict[str, Any]:
        if spec is None:
            return {"images": len(samples), "per_class": dict(zip(
                data.classes, class_counts([t for _, t in samples], len(data.classes)),
                strict=True))}
        return {"images": spec.num_samples, "shards": len(spec.urls), "per_class": dict(
            zip(data.classes, spec.per_class, strict=True)) if spec.per_class else None}

    return {"classes": data.classes, "num_classes": len(data.classes), "source": "shards",
            "train": summary(data.train_shards, []),
            "val": summary(data.val_shards, data.val_samples),
            "skipped": data.skipped, "num_skipped": len(data.skipped),
            "num_ignored_files": 0, "ignored_files_examples": []}


def _shard_data(cfg: Config) -> RunData:
    """Training shards (``data.root``) and validation from ``data.val_root`` (a folder or
    shards), else from the ``val`` split named in the training shards' ``_info.json``."""
    from vit.data.shards import open_shards

    d = cfg.data
    if d.pipeline == "memory":
        raise ConfigError("data.pipeline=memory reads image folders; train from shards with "
                          "the default data.pipeline=albumentations")
    if d.sampler == "weighted":
        raise ConfigError("data.sampler=weighted needs an image folder; with shards use "
                          "loss.class_weights=balanced")
    train = open_shards(d.root)
    check_classes(train.classes, train.per_class, source=d.root)
    if cfg.loss.class_weights == "balanced" and train.per_class is None:
        raise ConfigError(f"loss.class_weights=balanced needs the class counts of {d.root}, "
                          "which its _info.json lacks; write the shards with `vit shard`")
    folder = Path(train.urls[0]).parent
    val_root = d.val_root
    if val_root is None:
        names = train.info.get("splits", {}).get("val", {}).get("filenames")
        if not names:
            raise DataError(f"no validation data for the shards {d.root}: {folder}/_info.json "
                            "names no val shards; pass data.val_root=DIR or a shard pattern")
        val_root = "::".join(str(folder / name) for name in names)  # webdataset's list syntax
    val_shards, val_samples = None, []
    if is_shard_spec(val_root):
        val_shards = open_shards(val_root)
        if val_shards.classes != train.classes:
            raise VitError(f"{val_root} has classes {val_shards.classes} but {d.root} has "
                           f"{train.classes}; they must match")
    else:
        val_samples = scan_folder(val_root, classes=train.classes).samples
    return RunData(root=folder, classes=train.classes, train_samples=[], val_samples=val_samples,
                   split={"kind": "shards", "train": d.root, "val": val_root},
                   train_shards=train, val_shards=val_shards)


def _shard_loaders(cfg: Config, data: RunData, *, img_size: int, device: torch.device,
                   batch_size: int, rank: int, world_size: int, skip_log: Path | None
                   ) -> tuple[Any, Any, RunData]:
    """Streaming loaders over the shards: the same transforms as the folder path."""
    from vit.data.shards import ShardDataset, ShardLoader

    d = cfg.data
    train_tf, eval_tf = _transforms(cfg, img_size)
    log = str(skip_log) if skip_log is not None else None
    slots = world_size * max(d.workers, 1)
    spec = data.train_shards
    if len(spec.urls) < slots:
        raise ConfigError(
            f"{len(spec.urls)} training shards cannot feed {world_size} processes x "
            f"{max(d.workers, 1)} loader workers without reading a shard twice; write smaller "
            "shards (vit shard --shard-size) or lower --workers")
    common = dict(rank=rank, world_size=world_size, batch_size=batch_size, skip_log=log)
    train_set = ShardDataset(spec.urls, spec.lengths, len(data.classes), train_tf,
                             seed=cfg.train.seed, shuffle_buffer=d.shuffle_buffer, **common)
    pin = device.type == "cuda"
    train_loader = ShardLoader(train_set, batch_size=batch_size, workers=d.workers,
                               drop_last=True, pin_memory=pin)
    if data.val_shards is not None:
        val_set = ShardDataset(data.val_shards.urls, data.val_shards.lengths, len(data.classes),
                               eval_tf, seed=cfg.train.seed, **common)
        workers = min(d.workers, len(data.val_shards.urls))
        val_loader: Any = ShardLoader(val_set, batch_size=batch_size, workers=workers,
                                      drop_last=False, pin_memory=pin)
    else:
        val_loader = loader_lib.build_loader(
            ImageFolderDataset(data.val_samples, data.classes, eval_tf, skip_log=log),
            shuffle=False, drop_last=False, batch_size=batch_size, workers=d.workers,
            seed=cfg.train.seed, rank=rank, world_size=world_size, pin_memory=pin)
    return train_loader, val_loader, data
