"""WebDataset tar shards written by `vit shard` (``vit.data.shards``), streamed: validation on
``data.val_root`` (a folder or shards), else on the ``val`` shards their ``_info.json`` names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vit.config import Config
from vit.data.shards import is_shard_spec
from vit.data.sources.base import (
    DataSource,
    LoaderOptions,
    RunData,
    check_classes,
    transforms,
)
from vit.data.splits import class_counts
from vit.errors import ConfigError, DataError, VitError

__all__ = ["ShardSource"]


class ShardSource(DataSource):
    """``--data 'OUT/train-{000000..000123}.tar'``."""

    name = "set of tar shards"

    @classmethod
    def accepts(cls, spec: str | os.PathLike[str]) -> bool:
        return is_shard_spec(spec)

    def prepare(self, cfg: Config) -> RunData:
        from vit.data.folders import scan_folder
        from vit.data.shards import open_shards

        d, spec = cfg.data, self.spec
        _check_options(cfg)
        train = open_shards(spec)
        check_classes(train.classes, train.per_class, source=spec)
        if cfg.loss.class_weights == "balanced" and train.per_class is None:
            raise ConfigError(f"loss.class_weights=balanced needs the class counts of {spec}, "
                              "which its _info.json lacks; write the shards with `vit shard`")
        folder = Path(train.urls[0]).parent
        val_root = d.val_root
        if val_root is None:
            names = train.info.get("splits", {}).get("val", {}).get("filenames")
            if not names:
                raise DataError(f"no validation data for the shards {spec}: {folder}/_info.json "
                                "names no val shards; pass data.val_root=DIR or a shard pattern")
            val_root = "::".join(str(folder / name) for name in names)  # webdataset's lists
        val_shards, val_samples = None, []
        if is_shard_spec(val_root):
            val_shards = open_shards(val_root)
            if val_shards.classes != train.classes:
                raise VitError(f"{val_root} has classes {val_shards.classes} but {spec} has "
                               f"{train.classes}; they must match")
        else:
            val_samples = scan_folder(val_root, classes=train.classes).samples
        return RunData(root=folder, classes=train.classes, train_samples=[],
                       val_samples=val_samples,
                       split={"kind": "shards", "train": spec, "val": val_root},
                       train_shards=train, val_shards=val_shards, source=self)

    def loaders(self, cfg: Config, data: RunData, options: LoaderOptions
                ) -> tuple[Any, Any, RunData]:
        """Streaming loaders over the shards: the same transforms as the folder path."""
        from vit.data import loader as loader_lib
        from vit.data.dataset import ImageFolderDataset
        from vit.data.shards import ShardDataset, ShardLoader

        d, world_size = cfg.data, options.world_size
        train_tf, eval_tf = transforms(cfg, options.img_size)
        log = str(options.skip_log) if options.skip_log is not None else None
        spec = data.train_shards
        if len(spec.urls) < world_size * max(d.workers, 1):
            raise ConfigError(
                f"{len(spec.urls)} training shards cannot feed {world_size} processes x "
                f"{max(d.workers, 1)} loader workers without reading a shard twice; write "
                "smaller shards (vit shard --shard-size) or lower --workers")
        common = dict(rank=options.rank, world_size=world_size, batch_size=options.batch_size,
                      skip_log=log)
        train_set = ShardDataset(spec.urls, spec.lengths, len(data.classes), train_tf,
                                 seed=cfg.train.seed, shuffle_buffer=d.shuffle_buffer, **common)
        pin = options.device.type == "cuda"
        train_loader = ShardLoader(train_set, batch_size=options.batch_size, workers=d.workers,
                                   drop_last=True, pin_memory=pin)
        if data.val_shards is not None:
            val_set = ShardDataset(data.val_shards.urls, data.val_shards.lengths,
                                   len(data.classes), eval_tf, seed=cfg.train.seed, **common)
            workers = min(d.workers, len(data.val_shards.urls))
            val_loader: Any = ShardLoader(val_set, batch_size=options.batch_size,
                                          workers=workers, drop_last=False, pin_memory=pin)
        else:
            val_loader = loader_lib.build_loader(
                ImageFolderDataset(data.val_samples, data.classes, eval_tf, skip_log=log),
                shuffle=False, drop_last=False, batch_size=options.batch_size,
                workers=d.workers, seed=cfg.train.seed, rank=options.rank,
                world_size=world_size, pin_memory=pin)
        return train_loader, val_loader, data

    def report(self, data: RunData) -> dict[str, Any]:
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


def _check_options(cfg: Config) -> None:
    """Options that need an image folder."""
    if cfg.data.pipeline == "memory":
        raise ConfigError("data.pipeline=memory reads image folders; train from shards with "
                          "the default data.pipeline=albumentations")
    if cfg.data.sampler == "weighted":
        raise ConfigError("data.sampler=weighted needs an image folder; with shards use "
                          "loss.class_weights=balanced")
